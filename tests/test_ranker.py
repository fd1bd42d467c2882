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
    # Q76 is the best-known; Q13133 is 2.2 orders of magnitude above it; Q999999 over 3 (capped)
    assert np.allclose(col(F, "qid_gap"), [0.0, (np.log10(13133) - np.log10(76)) / 3, 1.0])
    two = features("Obama", "", "", CANDS[:2], [0.5, 0.4])  # the same gap with fewer candidates
    assert np.allclose(col(two, "qid_gap"), col(F, "qid_gap")[:2])
    assert list(col(F, "mention_in_name")) == [1.0, 1.0, 1.0]
    assert col(F, "sim_gap")[0] == 0.0 and col(F, "sim_gap")[2] < 0


def test_shipped_weights_rank_the_agreeing_candidate_first():
    coef, spec = load_weights()
    assert len(coef) == len(FEATURES) and spec["cv_accuracy"]["text_only"]["accuracy"] > 0.8
    s = score("Obama", "Obama speaks in 2009 about her garden.", "a woman smiling", CANDS,
              [0.45, 0.45, 0.45])
    assert int(np.argmax(s)) == 1


WARNERS = [
    {"qid": "Q2161525", "name": "John De Witt Warner",
     "desc": "Name: John De Witt Warner. Sex: male. Birth: 1851. Death: 1925, New York City. "
             "Occupation: lawyer, politician."},
    {"qid": "Q5569101", "name": "Pop Warner",
     "desc": "Name: Pop Warner. Sex: male. Birth: 1871, Springville. Death: 1954, Palo Alto."},
    {"qid": "Q716789", "name": "Warner Baxter",
     "desc": "Name: Warner Baxter. Sex: male. Birth: 1889. Death: 1951. Occupation: actor. "
             "Spouse: Winifred Bryson."},
]


def test_time_name_and_occupation_features():
    F = features("Warner", "Warner in 1871", "a black and white painting of a man", WARNERS,
                 [0.5, 0.5, 0.5], occupation_sims=[0.5, None, 0.3])
    assert list(col(F, "surname_match")) == [1.0, 1.0, 0.0]
    assert list(col(F, "given_name_match")) == [0.0, 0.0, 1.0]
    assert list(col(F, "before_birth")) == [0.0, 0.0, 1.0]  # 1871 < 1889
    assert list(col(F, "child_at_year")) == [0.0, 1.0, 0.0]  # Pop Warner was born that year
    assert list(col(F, "in_lifetime")) == [1.0, 0.0, 0.0]  # aged 20
    assert list(col(F, "after_death")) == [0.0, 0.0, 0.0]
    assert list(col(F, "painting_era")) == [-1.0, -1.0, -1.0]  # all born after 1830
    assert list(col(F, "monochrome_era")) == [1.0, 1.0, 1.0]  # all born before 1950
    assert list(col(F, "has_spouse")) == [0.0, 0.0, 1.0]
    assert np.allclose(col(F, "occupation_context"), [0.0, 0.0, -0.2])
    assert list(col(F, "no_occupation")) == [0.0, 1.0, 0.0]
    # a child, or a grave, in the text: a year outside the adult lifetime is no evidence against
    F = features("Warner", "Warner as a child in 1871; his grave in 1990", "", WARNERS, [0.5] * 3)
    assert list(col(F, "child_at_year")) == [0.0, 0.0, 0.0]
    assert list(col(F, "after_death")) == [0.0, 0.0, 0.0]
    F = features("Warner", "Mrs Warner and her daughter", "", WARNERS, [0.5] * 3)
    assert list(col(F, "gender_words_context")) == [-1.0, -1.0, -1.0]  # all male: disagree


def test_nil_fit_model_separates_a_fitting_candidate_from_unrelated_ones():
    from i2cr.ranker import rank, top_probability

    unrelated = [{"name": "Paris Hilton", "desc": "Name: Paris Hilton. Sex: female."},
                 {"name": "Amman", "desc": "Amman is the capital of Jordan."}]
    s, F = rank("Obama", "Obama speaks in 2009", "", unrelated, [0.1, 0.15])
    p_none = top_probability(s, F)
    s, F = rank("Obama", "Obama speaks in 2009", "", CANDS[:1] + unrelated, [0.6, 0.1, 0.15])
    p_fit = top_probability(s, F)
    assert p_none < 0.1 < p_fit  # the default nil_threshold lies between


def test_conditional_logit_learns_the_signal_and_icr_replay_matches_the_graph_rule():
    from i2cr.eval.calibrate import fit_clogit, icr_accuracy

    rng = np.random.default_rng(0)
    F, Y = [], []
    for _ in range(60):  # 6 candidates; the gold has a higher feature 0, feature 1 is noise
        x = rng.normal(size=(6, 2))
        g = rng.integers(6)
        x[g, 0] += 2.0
        y = np.zeros(6)
        y[g] = 1
        F.append(x)
        Y.append(y)
    w, mu, sd = fit_clogit(F, Y, l2=0.01)
    assert w[0] > 0.5 and abs(w[1]) < w[0] / 3
    acc = np.mean([Y[i][np.argmax(((F[i] - mu) / sd) @ w)] for i in range(60)])
    assert acc > 0.7
    # ICR replay: best-scoring first; below α it is rejected and the next one tried, at most
    # `reflections` times; if all fail, the try with the best cosine stands
    scores, sims, gold = np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.1, 0.5, 0.3, 0.9]), np.array([0, 1, 0, 0])
    assert icr_accuracy(scores, sims, gold, alpha=0.0, reflections=3) == 0  # first choice stands
    assert icr_accuracy(scores, sims, gold, alpha=0.4, reflections=3) == 1  # 2nd passes
    assert icr_accuracy(scores, sims, np.array([0, 0, 0, 1]), 0.95, 3) == 1  # best cosine kept
    assert icr_accuracy(scores, sims, gold, alpha=0.95, reflections=1) == 1  # tried 0 and 1: keep 1
