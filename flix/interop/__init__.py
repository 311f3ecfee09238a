"""Reading and writing other projects' formats."""
