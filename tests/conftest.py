"""Real daemons for the tests: each fixture module starts its own on loopback and stops it by PID."""

pytest_plugins = [
    "tests.infra.sshd",
    "tests.infra.slurm",
    "tests.infra.postgres",
    "tests.infra.influx",
    "tests.infra.sge",
]
