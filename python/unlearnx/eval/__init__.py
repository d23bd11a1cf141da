"""unlearnx.eval"""
