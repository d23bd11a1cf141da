"""unlearnx.report"""
