"""itkd_cli.models"""
