"""Multi-seed studies: a study file lists runs (``wkd fit``/``wkd-ban`` configs and overrides), the steps they need
(a teacher, its cost matrices) and seeds; the components here read it (:mod:`~wkd_lightning.study.spec`), plan its
commands (:mod:`~wkd_lightning.study.plan`), run them (:mod:`~wkd_lightning.study.execute`) or write a SLURM array
for them (:mod:`~wkd_lightning.study.slurm`), and report the results (:mod:`~wkd_lightning.study.stats`,
:mod:`~wkd_lightning.study.report`, :mod:`~wkd_lightning.study.plots`). The command is ``wkd-study``
(:mod:`wkd_lightning.commands.study`)."""

from wkd_lightning.study.spec import StudyFileError, StudySpec, load_study

__all__ = ["StudyFileError", "StudySpec", "load_study"]
