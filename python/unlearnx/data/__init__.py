"""unlearnx.data"""
