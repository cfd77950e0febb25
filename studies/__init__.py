"""Experiments run on top of selfplay (the methods table): the top floor. A study may import protocol, trainer,
agents and launch; none of them imports a study, except the CLI inside the function that runs one."""
