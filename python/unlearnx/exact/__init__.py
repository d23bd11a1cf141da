"""unlearnx.exact"""
