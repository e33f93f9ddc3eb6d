"""GRPO reward functions for tests (named by dotted path in a stage's `grpo.rewards`)."""


def byte_share(text: str, answer: str) -> float:
    """A reward that differs between the rollouts of a random model: the share of characters in a-m."""
    return sum("a" <= c <= "m" for c in text) / max(len(text), 1)
