import pytest

from datadream.components.prompts import class_prompt
from datadream.components.seeds import derive_seed
from datadream.layout import class_slug, slugify


def test_prompt_template_matches_the_paper():
    assert class_prompt("F/A-18", "aircraft ") == "a aircraft photo of a F/A-18"
    assert class_prompt("cat") == "a photo of a cat"
    # A domain word written without its trailing space gives the same prompt.
    assert class_prompt("Forest", "satellite") == class_prompt("Forest", "satellite ")


@pytest.mark.parametrize("name", ["F/A-18", "colt's foot", "..", "../../etc", "crème brûlée", "a b", "日本", ""])
def test_slugs_are_single_safe_path_components(name):
    slug = class_slug(7, name, 100)
    assert slug.startswith("007-")
    assert "/" not in slug and "\\" not in slug and ".." not in slug
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in slug)


def test_slugs_stay_unique_when_names_collide():
    assert slugify("F/A-18") == slugify("F-A-18")
    assert class_slug(0, "F/A-18", 2) != class_slug(1, "F-A-18", 2)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "image", "cat", 3) == derive_seed(0, "image", "cat", 3)
    seeds = {derive_seed(0, "image", c, i) for c in ("cat", "dog") for i in range(100)}
    assert len(seeds) == 200
    assert 0 <= derive_seed(1, "x") < 2**63
