"""Few-shot prompts: exact text per task, user templates, demonstration pools and selection."""

from __future__ import annotations

import pytest

from contrail.client.types import Demonstration, Item, TaskName
from contrail.core.tasks.demos import (
    DemoSelector,
    PoolEntry,
    builtin_pool,
    demonstration_pool,
    pool_from_items,
)
from contrail.core.tasks.prompts import PromptTemplate, TemplateError, build_prompt

CSQA_DEMO = Demonstration(
    question="What do people use to absorb extra ink from a fountain pen?",
    answer="blotter",
    choices=["shirt pocket", "inkwell", "blotter"],
    rationale="Blotting paper absorbs liquids like ink well.",
)


def test_csqa_prompt_exact() -> None:
    item = Item(
        id="q",
        question="Where would you put a plate after washing it?",
        answer="cupboard",
        choices=["cupboard", "table", "dishwasher"],
    )
    assert build_prompt(TaskName.CSQA, item, "cupboard", [CSQA_DEMO]) == (
        "Q: What do people use to absorb extra ink from a fountain pen?\n"
        "Answer Choices:\n"
        "(a) shirt pocket\n"
        "(b) inkwell\n"
        "(c) blotter\n"
        "A: The answer is blotter. Blotting paper absorbs liquids like ink well.\n"
        "\n"
        "Q: Where would you put a plate after washing it?\n"
        "Answer Choices:\n"
        "(a) cupboard\n"
        "(b) table\n"
        "(c) dishwasher\n"
        "A: The answer is cupboard."
    )


def test_strategyqa_prompt_exact_shows_no_choices() -> None:
    demo = Demonstration(
        question="Do hamsters provide food for any animals?",
        answer="yes",
        choices=["yes", "no"],
        rationale="Hamsters are prey animals. Prey animals provide food for predators.",
    )
    item = Item(id="q", question="Would a pear sink in water?", answer="no", choices=["yes", "no"])
    assert build_prompt(TaskName.STRATEGYQA, item, "no", [demo]) == (
        "Q: Do hamsters provide food for any animals?\n"
        "A: The answer is yes. Hamsters are prey animals. "
        "Prey animals provide food for predators.\n"
        "\n"
        "Q: Would a pear sink in water?\n"
        "A: The answer is no."
    )


def test_creak_prompt_exact_uses_statement() -> None:
    demo = Demonstration(
        question="Marlboro used iconic imagery to promote its brand.",
        answer="true",
        choices=["true", "false"],
        rationale="Marlboro used cowboys as an advertising campaign.",
    )
    item = Item(
        id="q",
        question="Fax works without any internet connection.",
        answer="false",
        choices=["true", "false"],
    )
    assert build_prompt(TaskName.CREAK, item, "false", [demo]) == (
        "Q: Marlboro used iconic imagery to promote its brand.\n"
        "A: The statement is true. Marlboro used cowboys as an advertising campaign.\n"
        "\n"
        "Q: Fax works without any internet connection.\n"
        "A: The statement is false."
    )


def test_qasc_prompt_exact_with_eight_choices() -> None:
    options = ["vapor", "dense", "gas", "cooled", "steam", "solid", "boiling", "cold"]
    item = Item(
        id="q", question="what state is a liquid in when frozen?", answer="solid", choices=options
    )
    assert build_prompt(TaskName.QASC, item, "solid", []) == (
        "Q: what state is a liquid in when frozen?\n"
        "Answer Choices:\n"
        "(a) vapor\n(b) dense\n(c) gas\n(d) cooled\n(e) steam\n(f) solid\n(g) boiling\n(h) cold\n"
        "A: The answer is solid."
    )


def test_generic_free_form_prompt_and_empty_answer_slot() -> None:
    demo = Demonstration(
        question="Capital of Italy?",
        answer="Rome",
        rationale="Rome has been Italy's capital since 1871.",
    )
    item = Item(id="q", question="Capital of France?", answer="Paris")
    prompt = build_prompt(TaskName.GENERIC, item, "", [demo])
    assert prompt == (
        "Q: Capital of Italy?\n"
        "A: The answer is Rome. Rome has been Italy's capital since 1871.\n"
        "\n"
        "Q: Capital of France?\n"
        "A: The answer is ."  # the 'empty' perturbation: blank slot, as in the paper's code
    )


def test_demo_rationale_is_kept_on_one_line() -> None:
    demo = CSQA_DEMO.model_copy(update={"rationale": "Blotters absorb ink.\n\nQ: fake"})
    item = Item(id="q", question="Q?", answer="x", choices=["x", "y"])
    prompt = build_prompt(TaskName.CSQA, item, "x", [demo])
    assert "A: The answer is blotter. Blotters absorb ink. Q: fake\n\nQ: Q?" in prompt


# ---------------------------------------------------------------- user templates


def test_user_template_renders_demos_and_query() -> None:
    template = PromptTemplate("Question: {question}\nOptions:\n{choices}\nAnswer: {answer}.")
    item = Item(id="q", question="2+2?", answer="4", choices=["3", "4"])
    assert build_prompt(TaskName.GENERIC, item, "4", [CSQA_DEMO], template) == (
        "Question: What do people use to absorb extra ink from a fountain pen?\n"
        "Options:\n(a) shirt pocket\n(b) inkwell\n(c) blotter\n"
        "Answer: blotter. Blotting paper absorbs liquids like ink well.\n"
        "\n"
        "Question: 2+2?\nOptions:\n(a) 3\n(b) 4\nAnswer: 4."
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Q: {question}\nA: {answr}.", "unknown placeholders ['answr']"),
        ("Q: {question}\nA: {}.", "unknown placeholders ['']"),
        ("Q: {question}\nA: {0}.", "unknown placeholders ['0']"),
        ("Q: {question.upper}\nA: {answer}.", "unknown placeholders ['question.upper']"),
        ("Q: {question}\nA: nothing.", "{answer} exactly once"),
        ("Q: {question} {answer}\nA: {answer}.", "{answer} exactly once"),
        ("A: {answer}.", "must contain {question}"),
        ("Q: {question\nA: {answer}.", "not a valid format string"),
        ("Q: {question}\nA: {answer}. ", "must not end with whitespace"),
        ("Q: {question!z}\nA: {answer}.", "format spec or conversion"),
        # A short template that renders to a gigabyte (the OOM of issue 19), and repr.
        ("Q: {question:>999999999}\nA: {answer}.", "{question:>999999999} has a format spec"),
        ("Q: {question!r}\nA: {answer}.", "{question!r} has a format spec"),
        ("Q: {question}\n{choices:^{answer}}A: {answer}.", "format spec or conversion"),
        ("Q: {question}\nA: {answer!s:>20}.", "{answer!s:>20} has a format spec"),
    ],
)
def test_invalid_templates_are_rejected_up_front(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        PromptTemplate(text)
    assert message in str(info.value)


# ---------------------------------------------------------------- pools and selection


@pytest.mark.parametrize("task", [TaskName.CSQA, TaskName.STRATEGYQA, TaskName.CREAK])
def test_builtin_pools_load_from_package(task: TaskName) -> None:
    pool = builtin_pool(task)
    assert len(pool) == 24
    assert len({e.id for e in pool}) == 24
    assert all(e.demo.rationale.endswith(".") for e in pool)
    assert all(e.demo.choices and e.demo.answer in e.demo.choices for e in pool)


def test_tasks_without_pool_draw_from_items_or_job_demonstrations() -> None:
    assert builtin_pool(TaskName.QASC) == ()
    items = [
        Item(id="a", question="A?", answer="x", rationale="Because a."),
        Item(id="b", question="B?", answer="y"),
    ]
    assert [e.id for e in demonstration_pool(TaskName.GENERIC, items)] == ["a"]
    own = [Demonstration(question="D?", answer="d", rationale="Because d.")]
    for task in (TaskName.QASC, TaskName.CSQA):
        assert [e.demo for e in demonstration_pool(task, items, own)] == own


def test_selection_is_seeded_shared_and_never_the_query() -> None:
    pool = list(builtin_pool(TaskName.CREAK))
    selector = DemoSelector(pool, k=6, seed=3)
    outsider = Item(id="new", question="Something else entirely.", answer="true")
    shared = selector.for_query(outsider)
    assert len(shared) == 6
    assert DemoSelector(pool, k=6, seed=3).for_query(outsider) == shared  # reproducible
    assert DemoSelector(pool, k=6, seed=4).for_query(outsider) != shared  # seed matters

    for entry in pool:  # every pool record as the query, by id
        query = Item(id=entry.id or "", question="Unrelated?", answer="true")
        demos = selector.for_query(query)
        assert len(demos) == 6 and entry.demo not in demos
        # Replacement in place: the other positions keep the shared demonstrations.
        assert sum(a != b for a, b in zip(demos, shared, strict=True)) <= 1

    same_question = Item(id="other", question="  " + shared[2].question.upper(), answer="true")
    demos = selector.for_query(same_question)
    assert shared[2] not in demos and demos[:2] == shared[:2] and demos[3:] == shared[3:]


def test_selection_from_items_excludes_query() -> None:
    items = [
        Item(id=f"i{n}", question=f"Question {n}?", answer="x", rationale=f"Reason {n}.")
        for n in range(4)
    ]
    selector = DemoSelector(pool_from_items(items), k=4, seed=0)
    for item in items:
        demos = selector.for_query(item)
        assert len(demos) == 3  # the pool has only three others
        assert all(d.question != item.question for d in demos)


def test_user_demonstrations_without_ids_keep_their_seeded_order() -> None:
    demos = [Demonstration(question=f"D{n}?", answer="d", rationale="R.") for n in range(5)]
    pool = [PoolEntry(id=None, demo=d) for d in demos]
    chosen = DemoSelector(pool, k=5, seed=1).for_query(Item(id="q", question="Q?", answer="a"))
    assert sorted(d.question for d in chosen) == [d.question for d in demos]
    assert DemoSelector(pool, k=0, seed=1).for_query(Item(id="q", question="Q?", answer="a")) == []
