//! Importer checks on small hand-written Synthea folders: each case breaks one rule and the
//! error must name the file, the line and the problem.

use std::fs;
use std::path::Path;

use chrono::{DateTime, Utc};
use medconnect_domain::time::parse_instant;
use medconnect_import::synthea::{read_dir, ReadOptions};
use medconnect_import::ImportError;
use tempfile::TempDir;

const PATIENTS_HEADER: &str = "Id,BIRTHDATE,DEATHDATE,SSN,FIRST,LAST,GENDER,ADDRESS,CITY,STATE,ZIP";
const ENCOUNTERS_HEADER: &str =
    "Id,START,STOP,PATIENT,PROVIDER,ENCOUNTERCLASS,DESCRIPTION,REASONDESCRIPTION";
const CONDITIONS_HEADER: &str = "START,STOP,PATIENT,ENCOUNTER,CODE,DESCRIPTION";

const PATIENT_1: &str =
    "p-1,1980-02-29,,999-11-1001,Test1,Patient1,F,1 Main Street,Lincoln,Nebraska,68504";
const ENCOUNTER_1: &str = "e-1,2020-01-01T10:00:00Z,2020-01-01T10:30:00Z,p-1,,virtual,Visit,";

/// Writes a folder with the given rows under each header; `crlf` ends lines with CRLF.
fn folder(patients: &[&str], encounters: &[&str], conditions: &[&str], crlf: bool) -> TempDir {
    let dir = TempDir::new().expect("temp dir");
    let ending = if crlf { "\r\n" } else { "\n" };
    let write = |name: &str, header: &str, rows: &[&str]| {
        let mut text = format!("{header}{ending}");
        for row in rows {
            text.push_str(row);
            text.push_str(ending);
        }
        fs::write(dir.path().join(name), text).expect("write csv");
    };
    write("patients.csv", PATIENTS_HEADER, patients);
    write("encounters.csv", ENCOUNTERS_HEADER, encounters);
    write("conditions.csv", CONDITIONS_HEADER, conditions);
    dir
}

fn row_error(dir: &Path, options: &ReadOptions) -> (String, u64, String) {
    match read_dir(dir, options) {
        Err(ImportError::Row { file, line, message }) => (file, line, message),
        Err(other) => panic!("expected a row error, got {other}"),
        Ok(_) => panic!("expected a row error, the folder was accepted"),
    }
}

#[test]
fn valid_folder_is_read() {
    let dir = folder(&[PATIENT_1], &[ENCOUNTER_1], &["2020-01-01,,p-1,e-1,1,Condition"], false);
    let (batch, _) = read_dir(dir.path(), &ReadOptions::default()).expect("valid");
    assert_eq!(batch.patients.len(), 1);
    assert_eq!(batch.consultations.len(), 1);
    assert_eq!(batch.history.len(), 1);
}

/// One invalid folder: patients, encounters and conditions rows, then the file, line and
/// message part the error must carry.
type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a str, u64, &'a str);

#[test]
fn invalid_rows_table() {
    let p2_dead_before_born =
        "p-2,1990-01-01,1989-12-31,,Test2,Patient2,M,2 Main Street,Lincoln,Nebraska,68504";
    // (patients, encounters, conditions, file, line, expected message part)
    let cases: [Case<'_>; 6] = [
        (
            &[PATIENT_1],
            &[ENCOUNTER_1, ENCOUNTER_1],
            &[],
            "encounters.csv",
            3,
            "duplicate encounter Id",
        ),
        (
            &[PATIENT_1],
            &["e-2,1970-01-01T00:00:00Z,,p-1,,virtual,Visit,"],
            &[],
            "encounters.csv",
            2,
            "earlier than the patient's BIRTHDATE",
        ),
        (
            &[PATIENT_1, p2_dead_before_born],
            &[ENCOUNTER_1],
            &[],
            "patients.csv",
            3,
            "DEATHDATE is earlier than BIRTHDATE",
        ),
        (
            &[PATIENT_1],
            &["e-3,2020-01-02T00:00:00Z,2020-01-01T00:00:00Z,p-1,,virtual,Visit,"],
            &[],
            "encounters.csv",
            2,
            "STOP is earlier than START",
        ),
        (
            &[PATIENT_1],
            &[ENCOUNTER_1],
            &["2020-02-01,2020-01-01,p-1,e-1,1,Condition"],
            "conditions.csv",
            2,
            "STOP is earlier than START",
        ),
        (
            &[PATIENT_1],
            &["e-4,2020-01-01T10:00:00Z,,p-9,,virtual,Visit,"],
            &[],
            "encounters.csv",
            2,
            "not in patients.csv",
        ),
    ];
    for (patients, encounters, conditions, file, line, expected) in cases {
        let dir = folder(patients, encounters, conditions, false);
        let (got_file, got_line, message) = row_error(dir.path(), &ReadOptions::default());
        assert_eq!(got_file, file, "{expected}");
        assert_eq!(got_line, line, "{expected}: {message}");
        assert!(message.contains(expected), "{expected}: {message}");
    }
}

#[test]
fn crlf_lines_are_numbered_like_lf() {
    let bad = "e-3,2020-01-02T00:00:00Z,2020-01-01T00:00:00Z,p-1,,virtual,Visit,";
    for crlf in [false, true] {
        let dir = folder(
            &[PATIENT_1],
            &[ENCOUNTER_1, ENCOUNTER_1.replace("e-1", "e-2").as_str(), bad],
            &[],
            crlf,
        );
        let (_, line, message) = row_error(dir.path(), &ReadOptions::default());
        assert_eq!(line, 4, "crlf {crlf}: {message}");
    }
}

#[test]
fn production_rejects_future_encounters() {
    let dir = folder(&[PATIENT_1], &["e-5,2090-01-01T00:00:00Z,,p-1,,virtual,Visit,"], &[], false);
    let options =
        ReadOptions { not_after: Some(parse_instant("2026-12-04T00:00:00Z").expect("instant")) };
    let (_, line, message) = row_error(dir.path(), &options);
    assert_eq!(line, 2);
    assert!(message.contains("future"), "{message}");
    assert!(read_dir(dir.path(), &ReadOptions::default()).is_ok(), "a simulated store accepts it");
}

#[test]
fn fractional_seconds_round_up() {
    let dir = folder(
        &[PATIENT_1],
        &["e-6,2015-01-01T00:00:00Z,2015-01-01T00:30:00.900Z,p-1,,virtual,Visit,"],
        &[],
        false,
    );
    let (batch, _) = read_dir(dir.path(), &ReadOptions::default()).expect("valid");
    let expected: DateTime<Utc> = parse_instant("2015-01-01T00:30:01Z").expect("instant");
    assert_eq!(batch.consultations[0].ended_at, Some(expected));
}

#[test]
fn bad_birthdate_is_not_echoed() {
    let row = "p-1,1980-13-45,,999-11-1001,Zelda1,Unique1,F,1 Main Street,Lincoln,Nebraska,68504";
    let dir = folder(&[row], &[], &[], false);
    let (file, line, message) = row_error(dir.path(), &ReadOptions::default());
    assert_eq!((file.as_str(), line), ("patients.csv", 2));
    assert!(message.contains("BIRTHDATE"), "{message}");
    for secret in ["1980-13-45", "Zelda1", "999-11-1001"] {
        assert!(!message.contains(secret), "{message}");
    }
}
