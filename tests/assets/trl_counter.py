"""TRL's documented environment (``environment_factory``), unchanged but for ``get_reward``: a counter with an
``increment`` tool. tests/test_env_train.py trains on it from the CLI and from Python."""


class IncrementEnv:
    def reset(self, **kwargs):
        self.counter = 0

    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self.counter += step
        return self.counter

    def get_reward(self) -> float:
        return float(self.counter)
