//! Mapping: every old address or GUID found in the store to a current directory record.
