"""unlearnx.models"""
