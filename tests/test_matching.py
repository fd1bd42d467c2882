from i2cr.matching import extract_answer, map_answer

NAMES = ["Michael Jordan", "Jordan", "Michael B. Jordan", "Jordan Peele"]


def test_marker_and_exact():
    assert extract_answer("Thinking...\nAnswer: Jordan Peele.") == "Jordan Peele"
    m = map_answer("Answer: Jordan", NAMES)
    assert (m.name, m.method) == ("Jordan", "exact")


def test_number_answer():
    assert map_answer("Answer: 3", NAMES).name == "Michael B. Jordan"
    assert map_answer("Answer: 3. Michael B. Jordan", NAMES).name == "Michael B. Jordan"


def test_contained_prefers_the_longest_name():
    m = map_answer("It is clearly Michael B. Jordan, the actor", NAMES)
    assert (m.name, m.method) == ("Michael B. Jordan", "contained")


def test_fuzzy_typo():
    m = map_answer("Answer: Jordon Peel", NAMES)
    assert (m.name, m.method) == ("Jordan Peele", "fuzzy")


def test_garbage_maps_to_nothing():
    assert map_answer("¯\\_(ツ)_/¯", NAMES).name is None
    assert map_answer("", NAMES).name is None


def test_nil_only_when_allowed():
    assert map_answer("Answer: nil", NAMES, allow_nil=True).name == "nil"
    assert map_answer("Answer: None of the above", NAMES, allow_nil=True).name == "nil"
    assert map_answer("Answer: nil", NAMES, allow_nil=False).name is None
