"""The errors the CLI prints as one line: bad input (``DataError``, naming where the problem is) and
flags a run cannot use together (``ConfigError``)."""


class DataError(ValueError):
    """Bad input: a file, an interaction, a turn or a query the project cannot use.

    ``str(err)`` is a single line of the form ``FILE: interaction I turn T: what is wrong``
    so that a CLI can print it as-is and carry on with the other items.
    """

    def __init__(self, message: str, file: str | None = None, interaction: int | None = None,
                 turn: int | None = None):
        self.reason = message
        self.file = file
        self.interaction = interaction
        self.turn = turn
        super().__init__(self.line())

    def line(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        loc = []
        if self.interaction is not None:
            loc.append(f"interaction {self.interaction}")
        if self.turn is not None:
            loc.append(f"turn {self.turn}")
        if loc:
            where.append(" ".join(loc))
        msg = " ".join(str(self.reason).split())  # one line, always
        return ": ".join(where + [msg]) if where else msg

    def located(self, file=None, interaction=None, turn=None) -> "DataError":
        """A copy with the missing location parts filled in."""
        return DataError(self.reason,
                         file=self.file if self.file is not None else file,
                         interaction=self.interaction if self.interaction is not None else interaction,
                         turn=self.turn if self.turn is not None else turn)


class ConfigError(ValueError):
    """A flag, or a combination of flags, that a run cannot use: one line naming the flags."""
