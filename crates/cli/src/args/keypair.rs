//! `nimbus keypair ...` arguments.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum KeypairCmd {
    /// Register an existing SSH public key.
    Import {
        name: String,
        /// An OpenSSH public key file, e.g. ~/.ssh/id_ed25519.pub.
        #[arg(long)]
        public_key_file: PathBuf,
    },
    /// Create an Ed25519 keypair: the private key is printed once (save it), never stored.
    Create { name: String },
    /// The project's keypairs.
    List,
    /// Delete a keypair (instances created with it keep their key).
    Delete { name: String },
}
