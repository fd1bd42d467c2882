"""TES by retrieval: a candidate ranker with no LLM, for every entity type.

- :mod:`i2cr.names` (shared with the KB and the texts the embedder compares): title forms and
  mention forms (underscores, escapes, disambiguators, qualifiers, plurals, initialisms, demonyms);
- :mod:`.features`: the feature rows;
- :mod:`.model`: :class:`Ranker` (inputs, scores, probabilities, NIL) and the weights file;
- :mod:`.fit`: fitting, NIL calibration and leave-one-dataset-out figures
  (``python -m i2cr.eval.calibrate`` runs it).
"""

from .features import FEATURES, features, has_prior, occupation, prior_of
from .model import MODELS, NIL_FEATURES, Ranker, Ranking, Weights, load_weights

__all__ = ["FEATURES", "MODELS", "NIL_FEATURES", "Ranker", "Ranking", "Weights", "features",
           "has_prior", "load_weights", "occupation", "prior_of"]
