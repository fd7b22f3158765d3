//! The integration tests, one binary (one link on a 2-core machine): a module per area.

mod support;

mod addressbooks;
mod cli;
mod compact_plans;
mod cs_file_store;
mod directory_cli;
mod directory_ldap;
mod directory_ldif;
mod dropbox;
mod example;
mod external_corpus;
mod golden;
mod ical_corpus;
mod ical_props;
mod layers;
mod lifecycle;
mod mapping_file;
mod migrate;
mod pg_store;
mod props;
mod provision_cli;
mod provision_db;
mod provision_ldap;
mod report_html;
mod safety;
mod state_prune;
mod store_cli;
mod store_walk;
mod store_write;
mod stress;
mod vcard_props;
mod workflow;
