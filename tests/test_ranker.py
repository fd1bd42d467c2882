"""The retrieval ranker's features and shipped weights."""

import numpy as np

from i2cr.ranker import FEATURES, features, load_weights, score

CANDS = [
    {"qid": "Q76", "name": "Barack Obama",
     "desc": "Name: Barack Obama. Sex: male. Birth: 1961, Honolulu. Occupation: politician."},
    {"qid": "Q13133", "name": "Michelle Obama",
     "desc": "Name: Michelle Obama. Sex: female. Birth: 1964, Chicago. Occupation: lawyer."},
    {"qid": "Q999999", "name": "Obama Yoshida",
     "desc": "Name: Obama Yoshida. Sex: male. Birth: 1820. Death: 1880. Occupation: samurai."},
]


def col(F, name):
    return F[:, FEATURES.index(name)]


def test_features_capture_gender_year_popularity_and_names():
    F = features("Obama", "Obama speaks in 2009 about her garden.", "a woman smiling", CANDS,
                 [0.5, 0.4, 0.1])
    assert F.shape == (3, len(FEATURES))
    assert list(col(F, "gender_clue")) == [-1.0, 1.0, -1.0]  # 'woman' agrees with Sex: female
    assert list(col(F, "gender_context")) == [-1.0, 1.0, -1.0]  # 'her'
    assert list(col(F, "year_fit")) == [1.0, 1.0, -1.0]  # 2009 is outside 1815..1910
    assert list(col(F, "qid_rank")) == [0.0, 0.5, 1.0]  # Q76 is the best-known
    assert list(col(F, "mention_in_name")) == [1.0, 1.0, 1.0]
    assert col(F, "sim_gap")[0] == 0.0 and col(F, "sim_gap")[2] < 0


def test_shipped_weights_rank_the_agreeing_candidate_first():
    coef, intercept, spec = load_weights()
    assert len(coef) == len(FEATURES) and spec["cv_accuracy"]["text_only"]["accuracy"] > 0.8
    s = score("Obama", "Obama speaks in 2009 about her garden.", "a woman smiling", CANDS,
              [0.45, 0.45, 0.45])
    assert int(np.argmax(s)) == 1
