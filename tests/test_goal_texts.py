"""Goal texts: every ML4 and ML10 task has a canonical text and paraphrases a user could type,
unseen phrasings that training never uses, and every one splits into a verb and an object part."""

from __future__ import annotations

import pytest

from cmrl.nets.goal_text import OBJECT_WORDS, split_goal
from cmrl.envs.tasks import GOAL_TEXTS, ML4_TEST, ML4_TRAIN, UNSEEN_GOAL_TEXTS, goal_texts
from cmrl.nets.text_encoders import validate_goal_text

ML10_TRAIN = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "sweep-v3",
              "basketball-v3")
ML10_TEST = ("drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3",
             "lever-pull-v3")
ALL_TEXTS = [(task, text) for table in (GOAL_TEXTS, UNSEEN_GOAL_TEXTS)
             for task, texts in table.items() for text in texts]


def test_ml10_split_is_the_one_the_texts_cover():
    from metaworld.env_dict import ML10_V3

    assert set(ML10_V3["train"]) == set(ML10_TRAIN) and set(ML10_V3["test"]) == set(ML10_TEST)


@pytest.mark.parametrize("task", sorted(set(ML10_TRAIN + ML10_TEST + tuple(ML4_TRAIN) + ML4_TEST)))
def test_every_task_has_curated_texts(task):
    texts = GOAL_TEXTS[task]
    assert goal_texts(task) == texts and len(texts) == 4 and len(set(texts)) == 4
    unseen = UNSEEN_GOAL_TEXTS[task]
    assert 1 <= len(unseen) <= 2
    assert not set(unseen) & set(texts)  # training never samples them
    for text in texts + unseen:
        assert validate_goal_text(text) == text and text == text.lower()


def test_no_text_names_two_tasks():
    owners: dict[str, set[str]] = {}
    for task, text in ALL_TEXTS:
        owners.setdefault(text, set()).add(task)
    assert {t: o for t, o in owners.items() if len(o) > 1} == {}


@pytest.mark.parametrize("task,text", ALL_TEXTS)
def test_every_text_splits_into_a_verb_and_an_object(task, text):
    verb, obj = split_goal(text)
    assert verb and obj
    assert verb != text and obj != text, (verb, obj)  # neither part fell back to the whole text
    assert any(w in OBJECT_WORDS for w in obj.split())
    assert not any(w in OBJECT_WORDS for w in verb.split())
