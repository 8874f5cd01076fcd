"""Diagnose a model's own hallucinations (DFTG step 1), report them, and close the remedy loop.

* :mod:`.truth`: where ground truth comes from: :class:`AnnotationBackend` (tested) or a
  :class:`DetectorBackend` wrapping any detector;
* :mod:`.probes`: :func:`diagnose` runs captions, short captions, existence and attribute probes
  and returns a :class:`Diagnosis` (per-class FP/FN rates, attribute confusions, trigger pairs,
  misnamings: present A named as absent B);
* :mod:`.report`: :func:`write_report` (JSON + Markdown + PNG) and :func:`write_comparison` (the
  loop's before/after report over seeds);

The closed loop is ``scripts/remedy_loop.py``; the data it trains on comes from
:mod:`halluremedy.generate.targeted` and :mod:`halluremedy.generate.reflective`.
"""

from halluremedy.diagnose.probes import (
                                         AttributeConfusion,
                                         ClassStats,
                                         Diagnosis,
                                         Misnaming,
                                         Probe,
                                         ProbeConfig,
                                         ProbeRun,
                                         Trigger,
                                         TruthImage,
                                         analyse,
                                         attribute_probes,
                                         diagnose,
                                         existence_probes,
                                         run_probes,
)
from halluremedy.diagnose.report import write_comparison, write_report
from halluremedy.diagnose.truth import (
                                         AnnotationBackend,
                                         Detection,
                                         DetectorBackend,
                                         TruthBackend,
)

__all__ = ["AnnotationBackend", "AttributeConfusion", "ClassStats", "Detection", "DetectorBackend", "Diagnosis",
           "Misnaming", "Probe", "ProbeConfig", "ProbeRun", "Trigger", "TruthBackend", "TruthImage", "analyse",
           "attribute_probes", "diagnose", "existence_probes",
           "run_probes", "write_comparison", "write_report"]
