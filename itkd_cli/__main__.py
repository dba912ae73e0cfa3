"""`python -m itkd_cli` (and `torchrun ... -m itkd_cli train|compress ...`): the `itkd` command."""

from itkd_cli.cli.main import main

main()
