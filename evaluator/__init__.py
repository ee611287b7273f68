"""Runs the R code of answers in a sandbox and says what happened."""
