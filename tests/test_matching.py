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


def test_names_compared_as_titles():
    # an answer names a candidate as the title it is ('_' for a space, percent-escapes): 'Paris
    # (mythology)' is the candidate 'Paris_(mythology)', not 'Paris' found inside the answer
    names = ["Paris", "Paris_(mythology)"]
    assert map_answer("Answer: Paris (mythology)", names) == \
        map_answer("Paris_(mythology)", names)
    assert map_answer("Answer: Paris (mythology)", names).name == "Paris_(mythology)"
    m = map_answer("It is Paris (mythology), the Trojan prince", names)
    assert (m.name, m.method) == ("Paris_(mythology)", "contained")
    m = map_answer("Answer: François Hollande", ["François Mitterrand", "Fran%C3%A7ois_Hollande"])
    assert (m.name, m.method) == ("Fran%C3%A7ois_Hollande", "exact")


def test_number_with_a_disambiguated_name():
    # the name after a number decides, its closing ')' kept: '2. Iron Man (film)' is not
    # candidate 2 when candidate 3 is 'Iron Man (film)'
    names = ["Iron Man", "Iron Man 2", "Iron Man (film)"]
    m = map_answer("Answer: 2. Iron Man (film)", names)
    assert (m.name, m.method) == ("Iron Man (film)", "exact")
    assert map_answer("Answer: (2) Iron Man 2.", names).name == "Iron Man 2"
    assert map_answer("Answer: 3.", names).name == "Iron Man (film)"
