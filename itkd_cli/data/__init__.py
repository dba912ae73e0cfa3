"""itkd_cli.data"""
