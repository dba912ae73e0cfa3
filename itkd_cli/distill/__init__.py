"""itkd_cli.distill"""
