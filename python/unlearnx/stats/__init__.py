"""unlearnx.stats"""
