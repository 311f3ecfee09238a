"""TFDS builders over public release files in the user's `manual_dir` (nothing is downloaded).

Every external dataset enters flix one way: release files -> a TFDS builder (strict parsing of
the official format; a malformed line is an error naming file and line) -> the TFDS data dir
(built once, cached like any TFDS dataset) -> seqio tasks over `seqio.TfdsDataSource`.
"""
