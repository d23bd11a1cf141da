"""unlearnx.integrations"""
