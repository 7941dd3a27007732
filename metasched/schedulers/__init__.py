"""One adapter per scheduler (slurm, sge, htcondor, yarn, node): its commands and pure parsers of their
output; ``registry`` picks one by name. Adapters run commands only through ``domain.ports.Runner``."""
