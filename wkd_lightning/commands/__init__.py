"""The entry points of the project (console scripts), above every component: nothing outside this package imports
from it."""
