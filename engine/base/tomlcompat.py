"""tomllib on Python 3.11+, tomli before."""

try:
    import tomllib  # noqa: F401
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # noqa: F401
