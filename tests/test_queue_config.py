"""Queue configurations as values: validation, retry delays, parallelism, and which queue a topic gets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.config import NodeConfig, load_config
from node.errors import ConfigError
from node.model.queues import MAIN_QUEUE, QueueConfig, QueueDirectory, QueueType


def queue(name: str, *topics: str, **values: object) -> QueueConfig:
    return QueueConfig.create(name=name, topics=topics, **values)


# --- retry delays ------------------------------------------------------------------------------


def test_retry_delay_backs_off_exponentially_up_to_the_cap() -> None:
    config = queue("q", "a", retry_delay_s=0.5, retry_backoff=2.0, retry_delay_max_s=3.0)

    delays = [config.retry_delay_us(retry) / 1e6 for retry in range(1, 7)]

    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_fixed_retry_delay_without_backoff() -> None:
    config = queue("q", "a", retry_delay_s=0.25)

    assert {config.retry_delay_us(retry) for retry in range(1, 50)} == {250_000}


def test_per_job_or_consumer_delay_replaces_the_base_and_still_backs_off() -> None:
    config = queue("q", "a", retry_delay_s=10.0, retry_backoff=3.0, retry_delay_max_s=100.0)

    assert [config.retry_delay_us(r, override_s=1.0) / 1e6 for r in (1, 2, 3, 4, 5, 6)] == [
        1.0,
        3.0,
        9.0,
        27.0,
        81.0,
        100.0,
    ]
    assert config.retry_delay_us(1, override_s=0.0) == 0


def test_a_base_delay_above_the_cap_is_not_cut_by_it() -> None:
    assert queue("q", "a", retry_delay_s=10.0, retry_delay_max_s=1.0).retry_delay_us(1) == 10_000_000


def test_retrying_forever_with_backoff_stays_at_the_cap_however_many_retries() -> None:
    # 2.0 ** 1100 overflows a float: the thousandth retry must not break the queue
    config = queue("q", "a", retries=-1, retry_delay_s=1.0, retry_backoff=2.0, retry_delay_max_s=3600.0)

    assert config.retry_delay_us(1_100) == 3_600_000_000
    assert config.retry_delay_us(10**9) == 3_600_000_000


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0])
def test_a_consumer_asking_for_a_nonsense_delay_gets_the_queue_delay(bad: float) -> None:
    config = queue("q", "a", retry_delay_s=0.5)

    assert config.retry_delay_us(1, override_s=bad) == 500_000


# --- parallelism ---------------------------------------------------------------------------------


def test_parallelism_is_a_count_a_fraction_of_the_cores_or_all_cores() -> None:
    cores = os.cpu_count() or 1

    assert queue("q", "a", max_parallel=3).parallelism == 3
    assert queue("q", "a", max_parallel=-1).parallelism == cores
    assert queue("q", "a", max_parallel=0.5).parallelism == max(1, round(cores / 2))
    assert queue("q", "a", max_parallel=0.01).parallelism == 1
    assert queue("q", "a", max_parallel=8, type="ordered").parallelism == 1


# --- validation -------------------------------------------------------------------------------------

BAD_QUEUES = [
    ("bad-name", {"name": "a b", "topics": ["x"]}, "names use letters"),
    ("empty-name", {"name": "", "topics": ["x"]}, "names use letters"),
    ("no-topics", {"name": "q", "topics": []}, "needs topic patterns"),
    ("topics-as-string", {"name": "q", "topics": "a/**"}, "topics must be a list"),
    ("topic-not-string", {"name": "q", "topics": [1]}, "topics must be a list"),
    ("bad-pattern", {"name": "q", "topics": ["a//b"]}, "is invalid"),
    ("bad-type", {"name": "q", "topics": ["a"], "type": "fifo"}, "fifo"),
    ("zero-parallel", {"name": "q", "topics": ["a"], "max_parallel": 0}, "max_parallel is 0; it must be > 0"),
    ("fractional-parallel", {"name": "q", "topics": ["a"], "max_parallel": 2.5}, "must be whole"),
    (
        "retries-below-forever",
        {"name": "q", "topics": ["a"], "retries": -2},
        "retries is -2; it must be >= 0 and <= 2147483647 (or -1)",
    ),
    ("fractional-retries", {"name": "q", "topics": ["a"], "retries": 1.5}, "whole number"),
    (
        "negative-delay",
        {"name": "q", "topics": ["a"], "retry_delay_s": -1},
        "retry_delay_s is -1; it must be >= 0",
    ),
    ("infinite-delay", {"name": "q", "topics": ["a"], "retry_delay_s": float("inf")}, "finite"),
    ("nan-cap", {"name": "q", "topics": ["a"], "retry_delay_max_s": float("nan")}, "finite"),
    (
        "shrinking-backoff",
        {"name": "q", "topics": ["a"], "retry_backoff": 0.5},
        "retry_backoff is 0.5; it must be >= 1",
    ),
    ("negative-timeout", {"name": "q", "topics": ["a"], "timeout_s": -1}, "timeout_s is -1; it must be >= 0"),
    ("string-timeout", {"name": "q", "topics": ["a"], "timeout_s": "5"}, "finite number"),
    ("huge-parallel", {"name": "q", "topics": ["a"], "max_parallel": 1e308}, "<= 10000"),
    ("huge-delay", {"name": "q", "topics": ["a"], "retry_delay_s": 1e20}, "retry_delay_s is 1e+20"),
    ("huge-ranking", {"name": "q", "topics": ["a"], "ranking": 2**40}, "ranking is 1099511627776"),
    ("too-many-topics", {"name": "q", "topics": [f"t{i}" for i in range(257)]}, "at most 256 topic"),
    ("unknown-key", {"name": "q", "topics": ["a"], "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("values", "fragment"), [c[1:] for c in BAD_QUEUES], ids=[c[0] for c in BAD_QUEUES])
def test_invalid_queue_config_is_refused_with_a_message(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        QueueConfig.create(**values)

    assert fragment in str(raised.value)


# --- which queue a topic gets -------------------------------------------------------------------------


def test_topic_goes_to_the_most_specific_matching_pattern_among_equal_rankings() -> None:
    directory = QueueDirectory(
        [
            queue("all-images", "img/**"),
            queue("resizes", "img/resize/*"),
            queue("big-resize", "img/resize/big"),
            queue("deep", "img/resize/big/**"),
        ],
        QueueConfig(MAIN_QUEUE),
    )

    assert {
        topic: directory.for_topic(topic).name
        for topic in (
            "img/resize/big",
            "img/resize/small",
            "img/resize/small/x",
            "img/crop",
            "img/resize/big/x",
        )
    } == {
        "img/resize/big": "big-resize",
        "img/resize/small": "resizes",
        "img/resize/small/x": "all-images",
        "img/crop": "all-images",
        "img/resize/big/x": "deep",
    }
    assert directory.for_topic("video/cut").name == MAIN_QUEUE
    assert directory.for_topic("img").name == MAIN_QUEUE, "img/** matches descendants only"


def test_higher_ranking_beats_a_more_specific_pattern() -> None:
    directory = QueueDirectory(
        [
            queue("specific", "img/resize/big"),
            queue("ranked", "img/**", ranking=5),
            queue("low", "**", ranking=-1),
        ],
        QueueConfig(MAIN_QUEUE),
    )

    assert directory.for_topic("img/resize/big").name == "ranked"
    assert directory.for_topic("other/x").name == "low"


def test_main_queue_comes_first_then_queues_by_name() -> None:
    directory = QueueDirectory([queue("zeta", "z"), queue("alpha", "a")], QueueConfig(MAIN_QUEUE, retries=3))

    assert [q.name for q in directory.all()] == [MAIN_QUEUE, "alpha", "zeta"]
    assert directory.get(MAIN_QUEUE) is not None
    assert directory.get(MAIN_QUEUE).retries == 3  # type: ignore[union-attr]
    assert directory.get("nope") is None


# --- loading from TOML, flags and env ------------------------------------------------------------


def test_queues_load_from_toml_and_the_main_queue_from_the_jobs_section(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        """
[jobs]
retries = 4
retry_backoff = 2.0
timeout_s = 30
keep_jobs = false

[[queues]]
name = "images"
topics = ["img/**"]
type = "topic_round_robin"
max_parallel = 0.5
retry_delay_s = 1.5
ranking = 2

[[queues]]
name = "billing"
topics = ["billing/*"]
type = "ORDERED"
"""
    )

    config = load_config(path)

    images, billing = sorted(config.queues, key=lambda q: q.name != "images")
    assert (images.name, images.type, images.max_parallel, images.retry_delay_s, images.ranking) == (
        "images",
        QueueType.TOPIC_ROUND_ROBIN,
        0.5,
        1.5,
        2,
    )
    assert (billing.type, billing.topics) == (QueueType.ORDERED, ("billing/*",))
    main = config.main_queue()
    assert (main.name, main.retries, main.retry_backoff, main.timeout_s, main.keep_jobs) == (
        MAIN_QUEUE,
        4,
        2.0,
        30.0,
        False,
    )


def test_queues_load_from_a_json_setting(tmp_path: Path) -> None:
    queues = [{"name": "q", "topics": ["a/**"], "type": "ordered", "retries": -1}]

    config = load_config(None, {"JOBMESH_QUEUES": json.dumps(queues)}, base=NodeConfig.for_tests(tmp_path))

    assert [(q.name, q.type, q.retries) for q in config.queues] == [("q", QueueType.ORDERED, -1)]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("not json", "queues"),
        ('[{"name": "q", "topics": ["a"]}, {"name": "q", "topics": ["b"]}]', "configured twice"),
        ('[{"name": "q", "topics": ["a"], "retry_backoff": 0}]', "retry_backoff"),
    ],
)
def test_invalid_queue_settings_are_config_errors(tmp_path: Path, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        NodeConfig.for_tests(tmp_path).with_overrides({"queues": value})

    assert fragment in str(raised.value)
