"""itkd_cli.export"""
