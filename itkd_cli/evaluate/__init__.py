"""itkd_cli.evaluate"""
