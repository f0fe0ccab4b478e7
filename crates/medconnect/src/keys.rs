//! `medconnect keys rotate`: master key rotation (re-wrap every data key, resumable) and
//! tenant key rotation (a new data key version for new writes).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use medconnect_crypto::{KeyFileProvider, KeyProvider};

use crate::cli::KeysCommand;
use crate::Context;

/// Returns where the next master key is written during a rotation.
pub fn next_key_path(current: &Path) -> PathBuf {
    with_suffix(current, ".next")
}

/// Returns where a retired master key is kept after a rotation.
pub fn retired_key_path(current: &Path, version: u32) -> PathBuf {
    with_suffix(current, &format!(".v{version}"))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub fn run(context: &Context, command: KeysCommand) -> Result<ExitCode> {
    let KeysCommand::Rotate { master, tenant, batch_size } = command;
    if let Some(slug) = tenant {
        let mut store = context.open_store_with_key()?;
        let tenant = store.tenant_by_slug(&slug)?;
        let version = store.rotate_tenant_key(&tenant, &context.actor)?;
        outln!("tenant {} now seals new writes with data key version {version}", tenant.slug);
        return Ok(ExitCode::SUCCESS);
    }
    if master {
        rotate_master(context, batch_size)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Rotates the master key in steps that each survive a crash: create the next key file and
/// record the rotation, re-wrap data keys in batches, move the key files, then record the new
/// version. Running it again resumes from the step it reached.
fn rotate_master(context: &Context, batch_size: u32) -> Result<()> {
    if std::env::var_os(crate::MASTER_KEY_ENV).is_some() {
        // TODO: only key files rotate. A key from the environment needs a second variable for
        // the next key and a way to retire the old one.
        bail!(
            "master key rotation works with key files only: unset {} and use --master-key-file",
            crate::MASTER_KEY_ENV
        );
    }
    let current_path = context.master_key_path();
    let next_path = next_key_path(&current_path);
    let mut store = context.open_store()?;
    let version = store.master_key_version()?;
    let target = match store.master_rotation_target()? {
        Some(target) => {
            outln!("resuming the rotation to master key version {target}");
            target
        }
        None => {
            if next_path.exists() {
                bail!(
                    "{} exists but no rotation is recorded: move it away, then run the rotation again",
                    next_path.display()
                );
            }
            crate::commands::create_key_file(&next_path)?;
            store.begin_master_rotation(version + 1, &context.actor)?;
            version + 1
        }
    };
    let retired_path = retired_key_path(&current_path, version);
    if !current_path.exists() && next_path.exists() && retired_path.exists() {
        // The process stopped between the two renames: the old key is retired and the new
        // one not yet in place.
        fs::rename(&next_path, &current_path).with_context(|| {
            format!("moving {} to {}", next_path.display(), current_path.display())
        })?;
    }
    if !next_path.exists() && retired_path.exists() {
        // The files were already moved; only the version is left to record.
        let done = store.finish_master_rotation(&context.actor)?;
        outln!("master key version {done} is current; the old key is {}", retired_path.display());
        return Ok(());
    }

    let master =
        KeyFileProvider::new(&current_path).with_master_key_version(version).master_key()?;
    let next = KeyFileProvider::new(&next_path).with_master_key_version(target).master_key()?;
    store.set_master_keys(master, Some(next))?;
    let mut total = 0u64;
    loop {
        let remaining = store.rewrap_data_keys(batch_size)?;
        total += 1;
        if remaining == 0 {
            break;
        }
    }
    fs::rename(&current_path, &retired_path).with_context(|| {
        format!("moving {} to {}", current_path.display(), retired_path.display())
    })?;
    fs::rename(&next_path, &current_path)
        .with_context(|| format!("moving {} to {}", next_path.display(), current_path.display()))?;
    let done = store.finish_master_rotation(&context.actor)?;
    outln!(
        "master key version {done} is current ({total} batches re-wrapped); the old key is {}",
        retired_path.display()
    );
    outln!("keep the old key until every backup taken before this rotation has expired");
    Ok(())
}
