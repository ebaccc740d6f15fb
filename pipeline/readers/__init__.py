"""Dataset readers: each dataset's own on-disk layout -> a DatasetSpec (a list of ClipRecords).

Readers only look at metadata and file names; decoding happens in `pipeline.prepare`.
A root that is missing or laid out wrongly raises InputFileError, whose message names the root and
shows the layout that was expected; a bad list / CSV row raises InputFileError naming `<file>:<line>`.
"""
from __future__ import annotations

from pipeline.readers.spec import AUDIO_EXTENSIONS, ClipRecord, DatasetSpec, audio_files, require
from pipeline.readers.audioset import read_audioset
from pipeline.readers.esc50 import read_esc50
from pipeline.readers.speech_commands import read_spc1, read_spc2
from cache_tools.errors import InputFileError

__all__ = ["ClipRecord", "DatasetSpec", "InputFileError", "read_audioset", "read_esc50", "read_spc1",
           "read_spc2", "AUDIO_EXTENSIONS", "audio_files", "require"]
