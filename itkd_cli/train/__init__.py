"""itkd_cli.train"""
