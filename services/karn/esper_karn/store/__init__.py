"""Karn's SQL store: the library as Karn knows it, and the outcome history of every blueprint."""
