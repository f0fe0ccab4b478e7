//! The PHI-safe sanitizer that every audit-log entry and every log line passes through.
//!
//! [`sanitize`] replaces PHI-shaped substrings of free text with bracketed placeholders:
//! `[email]`, `[card]`, `[ssn]`, `[phone]`, `[date]`, `[id-number]`, `[address]` and
//! `[name]`. Opaque ids survive unchanged: UUIDs, prefixed ids such as `hold-42`, lowercase
//! product words, `key=value` pairs with lowercase keys and values, and RFC 3339 instants that
//! have a time part. So do counts of up to 8 digits that do not form a compact date, decimal
//! numbers such as `3.14`, and versions such as `2026.1` and `2026.04+85e9b3c283d7`.
//!
//! The rules run in this order, and each rule runs on the output of the rules before it:
//!
//! 1. Emails, with or without a dot in the domain (`alice@localhost`), become `[email]`. They
//!    run first because their local part may hold digits and capitals that the later rules
//!    would split into several placeholders.
//! 2. UUIDs and RFC 3339 instants are swapped for private-use tokens that no rule matches, and
//!    are restored at the end, so no digit rule eats part of an id. An instant is a timestamp of
//!    an event, not a birth date, so only date-only forms count as dates.
//! 3. US SSNs (`ddd-dd-dddd`, `ddd dd dddd`, `ddd.dd.dddd`, `ddd/dd/dddd`, one kind of
//!    separator per number) become `[ssn]`. They run before phone numbers, so the phone rule
//!    cannot take part of one.
//! 4. US phone numbers with separators (`(402) 555-0123`, `402-555-0123`, `402.555.0123`,
//!    `+1 402 555 0123`, `+14025550123`) become `[phone]`. They run before cards, so two phone
//!    numbers written side by side are not read as one card-shaped run of groups. The usual card
//!    groupings (4-4-4-4, 4-6-5, 4-6-4) never contain a standalone 3-3-4 sequence, so this order
//!    does not split a card.
//! 5. Payment card numbers (13 to 19 digits, passing the Luhn check) become `[card]`. A number
//!    is either plain or in groups of 3 to 6 digits split by one or more spaces, by hyphens
//!    (`4111 1111-1111  1111`), or by dots only (`4111.1111.1111.1111`). Dots never mix with
//!    the other separators, because `1234.5678 9012.3456` is more often two decimal numbers. Grouped numbers of that shape that fail the
//!    Luhn check become `[id-number]`, because a mistyped card or a grouped account number is
//!    still sensitive.
//! 6. Date-only forms become `[date]`, because that is how birth dates appear. Numeric forms
//!    with separators run first: `1962-03-01`, `1962/03/01`, `1962.03.01`, `03/01/1962`,
//!    `3/1/62`, `20-07-2022`, `07-20-2022` and `20.07.2022`. Of these, the forms with dots and
//!    the hyphen forms that end in the year need a year from 1900 to 2099. Then 8-digit runs that
//!    form a valid calendar date from 1900 to 2099 as `yyyymmdd`, `mmddyyyy` or `ddmmyyyy`
//!    (`20220720`, `07202022`) become `[date]`, and other 8-digit numbers survive as counts.
//!    Month-name forms run last: `March 3, 1990`, `3 March 1990`, `Mar 3 1990`, `March 1990`,
//!    `Jul-20-2022`, `20-Jul-2022`, `20-Jul-22` and `2022-Jul-20`.
//! 7. Runs of 9 or more digits that are not cards become `[id-number]`, because medical record,
//!    account and licence numbers look like that. Shorter numbers survive as counts.
//! 8. A house number followed by one to four capitalized street words, a street suffix, an
//!    optional unit (`Suite 33`, `Apt 4B`, `#4`) and an optional `, City, ST 12345` tail
//!    becomes `[address]`.
//! 9. Name-shaped words (first letter uppercase) become `[name]`, because every product message
//!    is written in lower case, and adjacent name words collapse into one `[name]`.
//!
//! The SSN, phone, card, date and address rules only match standalone text: the characters on
//! either side of a match must not be letters, digits or `_`, so `x4111111111111111` is left
//! alone. The long-number rule also accepts a letter prefix (`mrn123456789`). The output of
//! [`sanitize`] is a fixed point: sanitizing it again changes nothing.

use std::ops::Range;
use std::sync::LazyLock;

use chrono::NaiveDate;
use regex::Regex;

const EMAIL: &str = "[email]";
const CARD: &str = "[card]";
const SSN: &str = "[ssn]";
const PHONE: &str = "[phone]";
const DATE: &str = "[date]";
const ID_NUMBER: &str = "[id-number]";
const ADDRESS: &str = "[address]";
const NAME: &str = "[name]";

/// Opens a protected-id token. Tokens are built from private-use characters only, which are
/// neither letters nor digits, so no rule can match inside one or treat one as part of a word.
const TOKEN_OPEN: char = '\u{E000}';
/// Closes a protected-id token.
const TOKEN_CLOSE: char = '\u{E001}';
/// The private-use characters that stand for the decimal digits 0 to 9 of a token's index.
const TOKEN_DIGITS: [char; 10] = [
    '\u{E010}', '\u{E011}', '\u{E012}', '\u{E013}', '\u{E014}', '\u{E015}', '\u{E016}', '\u{E017}',
    '\u{E018}', '\u{E019}',
];
/// The private-use range reserved for tokens. Input characters in it are replaced with U+FFFD
/// before any rule runs, so input text can never forge a token.
const TOKEN_RANGE: std::ops::RangeInclusive<char> = '\u{E000}'..='\u{E01F}';

/// Title-case words that are honorifics. Their trailing period belongs to the name, so
/// `Dr. Alice Smith` collapses into one `[name]`.
const HONORIFICS: [&str; 7] = ["Mr", "Mrs", "Ms", "Mx", "Miss", "Dr", "Prof"];

/// Month names and abbreviations for the month-name date forms. Full names come before their
/// abbreviations, and `sept` before `sep`, so the longest name is preferred.
const MONTHS: &str = "january|february|march|april|may|june|july|august|september|october|\
                      november|december|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec";

/// Street suffixes, matched case-insensitively: common US suffixes, their usual abbreviations,
/// and the suffixes of Synthea-style addresses (`406 Kohler Camp`, `565 Wuckert Light`).
const STREET_SUFFIXES: &str = "street|st|streets|avenue|ave|av|road|rd|roads|lane|ln|drive|dr|\
    drives|court|ct|courts|boulevard|blvd|way|ways|place|pl|camp|terrace|ter|circle|cir|circles|\
    parkway|pkwy|parkways|trail|trl|highway|hwy|square|sq|squares|loop|run|path|crossing|xing|\
    crossroad|gateway|ridge|ridges|fort|ft|bridge|brg|junction|jct|junctions|station|sta|mission|\
    light|lights|overpass|underpass|village|villages|ville|view|views|manor|manors|vista|alley|\
    aly|branch|brook|brooks|burg|burgs|bypass|canyon|cape|causeway|center|centers|centre|cliff|\
    cliffs|club|common|commons|corner|corners|course|cove|coves|creek|crescent|crest|curve|dale|\
    dam|divide|estate|estates|expressway|expy|extension|extensions|fall|falls|ferry|field|fields|\
    flat|flats|ford|fords|forest|forge|forges|fork|forks|freeway|fwy|garden|gardens|glen|glens|\
    green|greens|grove|groves|harbor|harbors|haven|heights|hill|hills|hollow|inlet|island|\
    islands|isle|key|keys|knoll|knolls|lake|lakes|land|landing|loaf|lock|locks|lodge|mall|\
    meadow|meadows|mews|mill|mills|motorway|mount|mountain|mountains|neck|orchard|oval|park|\
    parks|pass|passage|pike|pine|pines|plain|plains|plaza|point|points|port|ports|prairie|radial|\
    ramp|ranch|rapid|rapids|rest|river|route|row|rue|shoal|shoals|shore|shores|skyway|spring|\
    springs|spur|spurs|stravenue|stream|summit|throughway|trace|track|trafficway|tunnel|\
    turnpike|tpke|union|unions|valley|valleys|via|viaduct|walk|walks|wall|well|wells";

/// Emails: a local part, `@`, and a domain with or without dots (`alice@localhost`).
static EMAIL_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\w.%+'-]+@[\w-]+(?:\.[\w-]+)*").expect("email pattern is a valid regex")
});

/// UUIDs in any case, and RFC 3339 instants with a time part (`2031-10-16T00:00:00Z`).
static PROTECTED_ID_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        r"|\b[0-9]{4}-[0-9]{2}-[0-9]{2}t[0-9]{2}:[0-9]{2}",
        r"(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:z|[+-][0-9]{2}(?::?[0-9]{2})?)?",
    ))
    .expect("protected id pattern is a valid regex")
});

/// A protected-id token as built by [`token_for`].
static TOKEN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("\u{E000}([\u{E010}-\u{E019}]+)\u{E001}").expect("token pattern is a valid regex")
});

/// Candidates for card numbers: digit groups split by one or more spaces, or by a single
/// hyphen or dot.
static DIGIT_RUN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[0-9]+(?:(?: +|[.-])[0-9]+)*").expect("digit run pattern is a valid regex")
});

/// One run of ASCII digits: a group of a card candidate, or a compact date candidate.
static DIGITS_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("[0-9]+").expect("digits pattern is a valid regex"));

/// SSNs in 3-2-4 groups split by hyphens, spaces, dots or slashes, one kind per number.
static SSN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}",
        r"|[0-9]{3}\.[0-9]{2}\.[0-9]{4}|[0-9]{3}/[0-9]{2}/[0-9]{4}",
    ))
    .expect("SSN pattern is a valid regex")
});

/// US phone numbers with an optional `+1`/`1` country code and an optional extension (`x12`,
/// `ext. 12`). The 10 digits need separators unless `+1` comes first, because a bare 10-digit
/// run is more often an account number and is left to the `[id-number]` rule.
///
/// NOTE: the 7-digit local form (`555-0123`) is not matched, because it looks the same as a
/// range such as `100-2000`.
static PHONE_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?:(?:\+?1[ .-]?)?(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}",
        r"|\+1[0-9]{10})",
        r"(?:[ \t]*(?i:x|ext\.?|extension)[ \t]*[0-9]{1,6})?",
    ))
    .expect("phone pattern is a valid regex")
});

/// Numeric date-only forms with separators. They run before [`MONTH_NAME_DATE_RE`], so a
/// month-year match (`may 2022`) cannot take the year of `may 2022-07-20` and leave the rest.
///
/// The regex engine prefers the earliest alternative that matches, not the longest match, and
/// a match that is cut short fails the standalone check. So a day that can end a date lists
/// `3[01]` before `0?[1-9]`, and `1962/03/21` is not cut to `1962/03/2`.
///
/// The forms with dots, and the hyphen forms that end in the year, need a year from 1900 to
/// 2099, because dots and hyphens also join version numbers and ranges.
///
/// NOTE: the year-first form with dots needs a two-digit month and day, so a calendar-style
/// version such as `2024.2.2` survives, and so does the date it may stand for.
static NUMERIC_DATE_RE: LazyLock<Regex> = LazyLock::new(|| {
    let day_or_month = "(?:3[01]|[12][0-9]|0?[1-9])";
    let year = "(?:19|20)[0-9]{2}";
    let pattern = format!(
        "[0-9]{{4}}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])\
         |[0-9]{{4}}/(?:0?[1-9]|1[0-2])/(?:3[01]|[12][0-9]|0?[1-9])\
         |{year}\\.(?:0[1-9]|1[0-2])\\.(?:0[1-9]|[12][0-9]|3[01])\
         |[0-9]{{1,2}}/[0-9]{{1,2}}/(?:[0-9]{{4}}|[0-9]{{2}})\
         |{day_or_month}-{day_or_month}-{year}\
         |{day_or_month}\\.{day_or_month}\\.{year}"
    );
    Regex::new(&pattern).expect("numeric date pattern is a valid regex")
});

/// Date-only forms with a month name. Alternatives that share a start are ordered longest
/// first, and a day that can end a date lists `3[01]` first, for the reason given at
/// [`NUMERIC_DATE_RE`]. The day-month-year form with hyphens also takes a two-digit year
/// (`20-Jul-22`), because a month name between two numbers is rarely anything but a date.
static MONTH_NAME_DATE_RE: LazyLock<Regex> = LazyLock::new(|| {
    let day = "(?:3[01]|[12][0-9]|0?[1-9])(?:st|nd|rd|th)?";
    let pattern = format!(
        "(?i)[0-9]{{4}}-(?:{MONTHS})-{day}\
         |{day}-(?:{MONTHS})-(?:[0-9]{{4}}|[0-9]{{2}})\
         |(?:{MONTHS})-{day}-[0-9]{{4}}\
         |(?:{MONTHS})\\.?[ \\t]+{day},?[ \\t]+[0-9]{{4}}\
         |{day}[ \\t]+(?:of[ \\t]+)?(?:{MONTHS})\\.?,?[ \\t]+[0-9]{{4}}\
         |(?:{MONTHS})\\.?,?[ \\t]+(?:1[89]|20)[0-9]{{2}}"
    );
    Regex::new(&pattern).expect("month name date pattern is a valid regex")
});

static LONG_NUMBER_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("[0-9]{9,}").expect("long number pattern is a valid regex"));

/// Street addresses with an optional unit and an optional `, City, ST 12345` tail. The tail is
/// only taken whole, because a city alone is caught by the name rule.
///
/// Street words must start with an uppercase letter (ASCII or Latin-1) or be an ordinal such
/// as `5th`, because product messages are lower case and a lowercase phrase such as
/// `12 records on the fast path` must survive. Only the suffix and the unit word are
/// case-insensitive.
///
/// NOTE: an address typed in lower case (`406 kohler camp`) therefore survives.
static ADDRESS_RE: LazyLock<Regex> = LazyLock::new(|| {
    let number = "[0-9]{1,6}[A-Za-z]?";
    let word = r"(?:[A-ZÀ-ÖØ-Þ][\w'’-]*\.?|[0-9]{1,4}(?i:st|nd|rd|th))";
    let unit_word = "(?i:suite|ste|unit|apt|apartment|room|rm|floor|fl|bldg|building|lot)";
    let unit_id = "[0-9A-Za-z][0-9A-Za-z-]*";
    let street = format!(r"{number}(?:[ \t]+{word}){{1,4}}[ \t]+(?i:{STREET_SUFFIXES})\b\.?");
    let unit =
        format!(r"(?:,?[ \t]+{unit_word}\.?[ \t]*\#?[ \t]*{unit_id}|,?[ \t]*\#[ \t]*{unit_id})");
    let city = format!(r"{word}(?:[ \t]+{word}){{0,2}}");
    let state_zip = r"[A-Z]{2}[ \t]+[0-9]{5}(?:-[0-9]{4})?";
    let city_state_zip = format!(r"(?:,?[ \t]+{city},?[ \t]+{state_zip})");
    let pattern = format!("{street}{unit}?{city_state_zip}?");
    Regex::new(&pattern).expect("address pattern is a valid regex")
});

/// Words for the name rule: letters, digits and `_`, with inner apostrophes (`O'Brien`).
static WORD_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\w+(?:['’]\w+)*").expect("word pattern is a valid regex"));

/// Replaces PHI-shaped substrings of `text` with bracketed placeholders.
///
/// The placeholders are `[email]`, `[phone]`, `[ssn]`, `[date]`, `[card]`, `[address]`,
/// `[name]`, and `[id-number]` for runs of 9 or more digits that are not card numbers. The
/// module documentation lists the rules and their order. The result is a fixed point:
/// `sanitize(&sanitize(x)) == sanitize(x)`. Characters in the private-use range U+E000 to
/// U+E01F, which the sanitizer reserves for its own tokens, are replaced with U+FFFD.
pub fn sanitize(text: &str) -> String {
    let text = text.replace(|c: char| TOKEN_RANGE.contains(&c), "\u{FFFD}");
    let text = EMAIL_RE.replace_all(&text, EMAIL);

    let mut protected = Vec::new();
    let text = protect_ids(&text, &mut protected);

    let text = replace_ssns_and_phones(&text);
    let text = replace_spans(&text, &card_spans(&text));
    let text = replace_standalone(&text, &NUMERIC_DATE_RE, DATE);
    let text = replace_spans(&text, &labeled(compact_date_spans(&text), DATE));
    let text = replace_standalone(&text, &MONTH_NAME_DATE_RE, DATE);
    let text = replace_spans(&text, &labeled(long_number_spans(&text), ID_NUMBER));
    let text = replace_standalone(&text, &ADDRESS_RE, ADDRESS);
    let text = replace_spans(&text, &labeled(name_spans(&text), NAME));

    restore_ids(&text, &protected)
}

/// Returns true when `text` contains a payment card number (13 to 19 digits, optionally grouped
/// by spaces, hyphens or dots, passing the Luhn check).
///
/// Groups must be 3 to 6 digits long, as in `4111 1111 1111 1111`, `4111.1111.1111.1111` or
/// `3782 822463 10005`, and the number must be standalone. The check runs the card rule of [`sanitize`] after the same
/// UUID, instant, SSN and phone rules, so digits inside those never count.
pub fn contains_card_number(text: &str) -> bool {
    let mut protected = Vec::new();
    let text = replace_ssns_and_phones(&protect_ids(text, &mut protected));
    card_spans(&text).iter().any(|(_, placeholder)| *placeholder == CARD)
}

/// Returns whether text that a client sent contains a payment card number. It finds what
/// [`contains_card_number`] finds, and also the forms that rule leaves alone so as not to
/// mangle log lines: digits glued to letters (`card4111111111111111`), digit groups split by
/// any punctuation or whitespace (`4111_1111/1111,1111`), invisible characters between digits
/// (zero-width spaces, soft hyphens, combining marks), and digits of other scripts or styles
/// (full-width, Arabic-Indic, Devanagari, mathematical, superscript, circled).
///
/// Such a number counts when its digits are written as card numbers are: 13 to 19 digits in
/// one group, or groups of four with a shorter last group, or American Express's 4-6-5 and
/// Diners Club's 4-6-4. Its digits must pass the Luhn check and start like a card of a
/// common network (2221 to 2720, or 3, 4, 5 or 6). Lists of short readings, such as
/// temperatures or dates, do not match.
pub fn input_contains_card_number(text: &str) -> bool {
    let visible = INVISIBLE_RE.replace_all(text, "");
    contains_card_number(&visible)
        || digit_group_runs(&visible).iter().any(|groups| has_card_window(groups))
}

/// Characters that show nothing on their own: format characters such as zero-width spaces
/// and soft hyphens, and combining marks.
static INVISIBLE_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\p{Cf}\p{Mn}\p{Me}]").expect("the invisible character pattern is valid")
});

/// A decimal digit of any script.
static DECIMAL_DIGIT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\p{Nd}$").expect("the decimal digit pattern is valid"));

/// Most separator characters allowed between two digit groups of one number.
const MAX_SEPARATORS: usize = 5;

/// Returns the value of a digit of any script or style, or None for other characters.
fn digit_value(c: char) -> Option<u8> {
    if c.is_ascii_digit() {
        return Some(c as u8 - b'0');
    }
    if c.is_ascii() {
        return None;
    }
    let code = u32::from(c);
    let styled = match code {
        0x00B9 => Some(1),
        0x00B2 => Some(2),
        0x00B3 => Some(3),
        0x2070 => Some(0),
        0x2074..=0x2079 => Some(code - 0x2070),
        0x2080..=0x2089 => Some(code - 0x2080),
        0x2460..=0x2468 => Some(code - 0x245F),
        0x24EA => Some(0),
        _ => None,
    };
    if let Some(value) = styled {
        return u8::try_from(value).ok();
    }

    if !is_decimal_digit(c) {
        return None;
    }
    // Unicode places each script's decimal digits in a run of ten, zero first. Adjacent runs,
    // such as the mathematical styles, follow each other whole, so the distance to the start
    // of the run, modulo ten, gives the value.
    let mut start = code;
    while let Some(previous) = start.checked_sub(1).and_then(char::from_u32) {
        if !is_decimal_digit(previous) {
            break;
        }
        start -= 1;
    }
    u8::try_from((code - start) % 10).ok()
}

fn is_decimal_digit(c: char) -> bool {
    let mut buffer = [0; 4];
    DECIMAL_DIGIT_RE.is_match(c.encode_utf8(&mut buffer))
}

/// Splits text into runs of digit groups, each group the values of its digits. Up to
/// [`MAX_SEPARATORS`] characters that are neither letters nor digits may separate two groups
/// of one run. A letter or a longer gap ends the run.
fn digit_group_runs(text: &str) -> Vec<Vec<Vec<u8>>> {
    let mut runs = Vec::new();
    let mut run: Vec<Vec<u8>> = Vec::new();
    let mut group: Vec<u8> = Vec::new();
    let mut separators = 0;
    for c in text.chars() {
        if let Some(digit) = digit_value(c) {
            if separators > 0 && !group.is_empty() {
                run.push(std::mem::take(&mut group));
            }
            group.push(digit);
            separators = 0;
            continue;
        }
        let separates = !c.is_alphanumeric() && separators < MAX_SEPARATORS;
        if separates && !group.is_empty() {
            separators += 1;
            continue;
        }
        if !group.is_empty() {
            run.push(std::mem::take(&mut group));
        }
        if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
        separators = 0;
    }
    if !group.is_empty() {
        run.push(group);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Returns whether some consecutive groups of a run are laid out as a card number and contain
/// one.
fn has_card_window(groups: &[Vec<u8>]) -> bool {
    for start in 0..groups.len() {
        let mut digits = 0;
        for end in start..groups.len() {
            // A window of more than 19 digits is no card number, so each start tries at most 19
            // groups.
            digits += groups[end].len();
            if digits > 19 {
                break;
            }
            let window = &groups[start..=end];
            if has_card_layout(window) && is_card_like(&window.concat()) {
                return true;
            }
        }
    }
    false
}

/// Returns whether groups of digits are laid out as card numbers are written.
fn has_card_layout(groups: &[Vec<u8>]) -> bool {
    let lengths: Vec<usize> = groups.iter().map(Vec::len).collect();
    match lengths.as_slice() {
        [single] => (13..=19).contains(single),
        [4, 6, 5] | [4, 6, 4] => true,
        [4, middle @ .., last] => middle.iter().all(|len| *len == 4) && (1..=4).contains(last),
        _ => false,
    }
}

/// Returns whether the digits have a card number's length, network prefix and Luhn check.
fn is_card_like(digits: &[u8]) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let prefix = digits[..4].iter().fold(0u32, |value, digit| value * 10 + u32::from(*digit));
    let network = matches!(digits[0], 3..=6) || (2221..=2720).contains(&prefix);
    let text: String = digits.iter().map(|digit| char::from(b'0' + digit)).collect();
    network && passes_luhn(&text)
}

/// Replaces SSNs, then phone numbers, the two rules that must run before the card rule.
fn replace_ssns_and_phones(text: &str) -> String {
    let text = replace_standalone(text, &SSN_RE, SSN);
    replace_standalone(&text, &PHONE_RE, PHONE)
}

/// Swaps every UUID and RFC 3339 instant for a token and stores the original in `protected`.
fn protect_ids(text: &str, protected: &mut Vec<String>) -> String {
    PROTECTED_ID_RE
        .replace_all(text, |caps: &regex::Captures<'_>| {
            protected.push(caps[0].to_owned());
            token_for(protected.len() - 1)
        })
        .into_owned()
}

/// Builds the token for entry `index` of the protected list.
fn token_for(index: usize) -> String {
    let mut token = String::new();
    token.push(TOKEN_OPEN);
    for digit in index.to_string().bytes() {
        token.push(TOKEN_DIGITS[usize::from(digit - b'0')]);
    }
    token.push(TOKEN_CLOSE);
    token
}

/// Puts the protected ids back in place of their tokens.
fn restore_ids(text: &str, protected: &[String]) -> String {
    TOKEN_RE
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let index = caps[1].chars().try_fold(0usize, |index, c| {
                let digit = TOKEN_DIGITS.iter().position(|&d| d == c)?;
                index.checked_mul(10)?.checked_add(digit)
            });
            // Every token was built by `token_for` from this list, because the input's own
            // private-use characters were replaced first. The fallback keeps the token as is.
            match index.and_then(|i| protected.get(i)) {
                Some(original) => original.clone(),
                None => caps[0].to_owned(),
            }
        })
        .into_owned()
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn char_before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn char_after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

/// Returns true when neither neighbour of `text[start..end]` is a letter, digit or `_`.
fn is_standalone(text: &str, start: usize, end: usize) -> bool {
    !char_before(text, start).is_some_and(is_word_char)
        && !char_after(text, end).is_some_and(is_word_char)
}

/// Replaces every standalone match of `pattern` with `placeholder`.
///
/// A match that is not standalone is retried one character later, so that `1-402-555-0123`
/// after a letter still yields the phone number that starts at `402`.
fn replace_standalone(text: &str, pattern: &Regex, placeholder: &str) -> String {
    let mut spans = Vec::new();
    let mut at = 0;
    while at <= text.len() {
        let Some(found) = pattern.find_at(text, at) else {
            break;
        };
        if !found.is_empty() && is_standalone(text, found.start(), found.end()) {
            spans.push(found.range());
            at = found.end();
        } else {
            at = found.start() + char_after(text, found.start()).map_or(1, char::len_utf8);
        }
    }
    replace_spans(text, &labeled(spans, placeholder))
}

/// Pairs each span with the same placeholder.
fn labeled(spans: Vec<Range<usize>>, placeholder: &str) -> Vec<(Range<usize>, &str)> {
    spans.into_iter().map(|span| (span, placeholder)).collect()
}

/// Replaces each of the sorted, disjoint byte ranges of `text` with its placeholder.
fn replace_spans(text: &str, spans: &[(Range<usize>, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (span, placeholder) in spans {
        out.push_str(&text[copied..span.start]);
        out.push_str(placeholder);
        copied = span.end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Finds the card numbers of `text`, and the card-shaped numbers that fail the Luhn check.
///
/// Each run of digit groups is searched for windows of consecutive groups that hold 13 to 19
/// digits. A window is either one plain group or several groups of 3 to 6 digits, so dates
/// (`1962-03-01`) and SSNs never join a window. The groups of a window are split either by dots
/// only or by spaces and hyphens only, so two decimal numbers (`1234.5678 9012.3456`) never
/// form one window. When a window passes the Luhn check the run is labeled `[card]`. When a
/// window of several groups exists but none passes, the run is labeled `[id-number]`, and a
/// plain group that fails is left to the long-number rule. A labeled span covers every group of
/// the run that is not glued to a letter, so a card glued to other groups leaks none of its
/// digits.
///
/// NOTE: a card written with dots mixed with spaces or hyphens (`4111.1111 1111.1111`) is
/// therefore not found, and neither is one split by tabs.
fn card_spans(text: &str) -> Vec<(Range<usize>, &'static str)> {
    let mut spans = Vec::new();
    for run in DIGIT_RUN_RE.find_iter(text) {
        let groups: Vec<Range<usize>> = DIGITS_RE
            .find_iter(run.as_str())
            .map(|group| run.start() + group.start()..run.start() + group.end())
            .collect();
        // A group glued to a letter (`x4111...`, `...16T00`) is part of a word, not a number.
        let first_usable = !char_before(text, run.start()).is_some_and(is_word_char);
        let last_usable = !char_after(text, run.end()).is_some_and(is_word_char);
        let last = groups.len() - 1;
        let usable = |i: usize| (i != 0 || first_usable) && (i != last || last_usable);
        let short = |i: usize| (3..=6).contains(&groups[i].len());
        let follows_dot = |i: usize| &text[groups[i - 1].end..groups[i].start] == ".";

        let mut has_card = false;
        let mut has_grouped_number = false;
        for i in 0..groups.len() {
            let mut digits = 0;
            let mut has_dot = false;
            let mut has_space_or_hyphen = false;
            for j in i..groups.len() {
                if !usable(j) || (j > i && !(short(i) && short(j))) {
                    break;
                }
                if j > i {
                    if follows_dot(j) {
                        has_dot = true;
                    } else {
                        has_space_or_hyphen = true;
                    }
                    if has_dot && has_space_or_hyphen {
                        break;
                    }
                }
                digits += groups[j].len();
                if digits > 19 {
                    break;
                }
                if digits < 13 {
                    continue;
                }
                if passes_luhn(&text[groups[i].start..groups[j].end]) {
                    has_card = true;
                } else if j > i {
                    has_grouped_number = true;
                }
            }
        }

        let placeholder = if has_card {
            CARD
        } else if has_grouped_number {
            ID_NUMBER
        } else {
            continue;
        };
        // A labeled run has a usable group, so `first <= end` and `last - 1` cannot underflow.
        let first = if first_usable { 0 } else { 1 };
        let end = if last_usable { last } else { last - 1 };
        spans.push((groups[first].start..groups[end].end, placeholder));
    }
    spans
}

/// Returns true when the ASCII digits of `number` pass the Luhn check. Other characters, such
/// as group separators, are skipped.
fn passes_luhn(number: &str) -> bool {
    let mut sum = 0;
    let digits = number.bytes().rev().filter(u8::is_ascii_digit).map(|b| u32::from(b - b'0'));
    for (position, digit) in digits.enumerate() {
        sum += if position % 2 == 1 {
            let doubled = digit * 2;
            if doubled > 9 {
                doubled - 9
            } else {
                doubled
            }
        } else {
            digit
        };
    }
    sum % 10 == 0
}

/// Finds runs of 9 or more digits that are standalone, or that end a word made only of letters
/// and `_` (`mrn123456789`). The fraction of a decimal number (`0.1234567891`) is left alone.
fn long_number_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    for run in LONG_NUMBER_RE.find_iter(text) {
        if char_after(text, run.end()).is_some_and(is_word_char) {
            continue;
        }
        let prefix_is_letters = text[..run.start()]
            .chars()
            .rev()
            .take_while(|&c| is_word_char(c))
            .all(|c| c.is_alphabetic() || c == '_');
        if !is_fraction(text, run.start()) && prefix_is_letters {
            spans.push(run.range());
        }
    }
    spans
}

/// Returns true when the digits that start at byte `start` of `text` follow a digit and a
/// dot, so they are the fraction of a decimal number.
fn is_fraction(text: &str, start: usize) -> bool {
    text[..start].strip_suffix('.').is_some_and(|rest| rest.ends_with(|c: char| c.is_ascii_digit()))
}

/// Finds standalone runs of exactly 8 digits that form a valid calendar date with a year from
/// 1900 to 2099, read as `yyyymmdd`, `mmddyyyy` or `ddmmyyyy`. Other 8-digit numbers survive
/// as counts, and so does the fraction of a decimal number (`0.20220720`).
fn compact_date_spans(text: &str) -> Vec<Range<usize>> {
    DIGITS_RE
        .find_iter(text)
        .filter(|run| {
            run.len() == 8
                && is_standalone(text, run.start(), run.end())
                && !is_fraction(text, run.start())
                && is_compact_date(run.as_str())
        })
        .map(|run| run.range())
        .collect()
}

/// Returns true when the 8 ASCII digits of `digits` form a valid calendar date from 1900 to
/// 2099 in at least one of the orders `yyyymmdd`, `mmddyyyy` and `ddmmyyyy`.
fn is_compact_date(digits: &str) -> bool {
    let Ok(number) = digits.parse::<u32>() else {
        return false;
    };
    let is_date = |year: u32, month: u32, day: u32| {
        (1900..=2099).contains(&year)
            && i32::try_from(year)
                .is_ok_and(|year| NaiveDate::from_ymd_opt(year, month, day).is_some())
    };
    let year_first = is_date(number / 10_000, number / 100 % 100, number % 100);

    let first_two = number / 1_000_000;
    let middle_two = number / 10_000 % 100;
    let last_four = number % 10_000;
    let month_first = is_date(last_four, first_two, middle_two);
    let day_first = is_date(last_four, middle_two, first_two);

    year_first || month_first || day_first
}

/// Returns true for words that the name rule treats as a possible name.
///
/// A word is name-shaped when its first character is uppercase (`Alice`, `Alice368`, `J`),
/// unless it is an acronym: 2 or more uppercase letters, optionally followed by a plural `s`
/// and then by one digit (`PHI`, `HIPAA`, `IDs`, `HL7`). Lowercase words with digits (`v2`,
/// `sha256`, `hold-42`) never count, and neither do words that start with a digit.
///
/// NOTE: the rule relies on product text being lower case, so a name typed in lower case
/// (`alice smith`) or in capitals (`ALICE`) survives.
fn is_name_word(word: &str) -> bool {
    if !word.chars().next().is_some_and(char::is_uppercase) {
        return false;
    }
    let capitals = word.chars().take_while(|c| c.is_uppercase()).count();
    let rest: String = word.chars().skip(capitals).collect();
    let is_acronym = capitals >= 2 && {
        let rest = rest.strip_prefix('s').unwrap_or(&rest);
        rest.is_empty() || (rest.len() == 1 && rest.chars().all(|c| c.is_ascii_digit()))
    };
    !is_acronym
}

/// Finds the name-shaped words of `text`, merging adjacent ones.
///
/// Two name words are adjacent when only spaces or tabs, or one hyphen (`Mary-Jane`), lie
/// between them. An honorific or a single-letter initial takes its trailing period along, so
/// `Dr. Alice J. Smith` is one span. Line breaks never merge, so each line keeps its own names.
fn name_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for word in WORD_RE.find_iter(text) {
        if !is_name_word(word.as_str()) {
            continue;
        }
        let mut end = word.end();
        let takes_period =
            HONORIFICS.contains(&word.as_str()) || word.as_str().chars().count() == 1;
        if takes_period && text[end..].starts_with('.') {
            end += 1;
        }
        if let Some(previous) = spans.last_mut() {
            let gap = &text[previous.end..word.start()];
            let adjacent =
                gap == "-" || (!gap.is_empty() && gap.chars().all(|c| c == ' ' || c == '\t'));
            if adjacent {
                previous.end = end;
                continue;
            }
        }
        spans.push(word.start()..end);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `input` sanitizes to `expected`, and that both outputs are fixed points.
    fn check(input: &str, expected: &str) {
        let output = sanitize(input);
        assert_eq!(output, expected, "sanitize({input:?})");
        assert_eq!(sanitize(&output), output, "sanitize is not idempotent on {input:?}");
    }

    fn check_all(cases: &[(&str, &str)]) {
        for (input, expected) in cases {
            check(input, expected);
        }
    }

    const EMAILS: &[(&str, &str)] = &[
        ("alice@example.com", "[email]"),
        ("contact alice.smith+tag@mail.example.org now", "contact [email] now"),
        ("sent to Alice368.Gleason633@example.com.", "sent to [email]."),
        ("alice368@localhost", "[email]"),
        ("mail root@mail-host-1 bounced.", "mail [email] bounced."),
    ];

    const CARDS: &[(&str, &str)] = &[
        ("4111 1111 1111 1111", "[card]"),
        ("4111-1111-1111-1111", "[card]"),
        ("4111111111111111", "[card]"),
        ("paid with 5500005555555559 today", "paid with [card] today"),
        ("amex 3782 822463 10005 on file", "amex [card] on file"),
        ("card=4111-1111-1111-1111,", "card=[card],"),
        ("ref 1234567812345678", "ref [id-number]"),
        ("ref 1234 5678 1234 5678", "ref [id-number]"),
        ("card 4111 1111 1111 1111 1111", "card [card]"),
        ("ssn 999-12-3456 4111 1111 1111 1111", "ssn [ssn] [card]"),
        ("4111.1111.1111.1111", "[card]"),
        ("4111  1111  1111  1111", "[card]"),
        ("4111 1111-1111  1111", "[card]"),
        ("paid with 4111.1111.1111.1111 today", "paid with [card] today"),
        ("amex 3782   822463   10005 on file", "amex [card] on file"),
        ("ref 1234.5678.1234.5678", "ref [id-number]"),
        ("ref 1234  5678  1234  5678", "ref [id-number]"),
    ];

    const SSNS: &[(&str, &str)] = &[
        ("999-12-3456", "[ssn]"),
        ("999 12 3456", "[ssn]"),
        ("patient ssn 999-12-3456 on file", "patient ssn [ssn] on file"),
        ("999.49.3983", "[ssn]"),
        ("999/49/3983", "[ssn]"),
        ("ssn=999.49.3983; alt 999/49/3983.", "ssn=[ssn]; alt [ssn]."),
    ];

    const PHONES: &[(&str, &str)] = &[
        ("(402) 555-0123", "[phone]"),
        ("402-555-0123", "[phone]"),
        ("402.555.0123", "[phone]"),
        ("+1 402 555 0123", "[phone]"),
        ("+1-402-555-0123", "[phone]"),
        ("+14025550123", "[phone]"),
        ("call 402-555-0123 after noon", "call [phone] after noon"),
        ("phone=(402)555-0123;", "phone=[phone];"),
        ("phones 402-555-0123 402-555-0199", "phones [phone] [phone]"),
        ("x1-402-555-0123", "x1-[phone]"),
        ("tel (402) 555-0123 x12, or ext. 7", "tel [phone], or ext. 7"),
        ("tel 402-555-0123 ext. 12.", "tel [phone]."),
    ];

    const DATES: &[(&str, &str)] = &[
        ("1962-03-01", "[date]"),
        ("born 1962-03-01 in town", "born [date] in town"),
        ("dob 03/01/1962", "dob [date]"),
        ("dob 3/1/62", "dob [date]"),
        ("dob 1962/03/01", "dob [date]"),
        ("born March 3, 1990", "born [date]"),
        ("born 3 March 1990", "born [date]"),
        ("born Mar 3 1990", "born [date]"),
        ("born mar. 3rd, 1990", "born [date]"),
        ("born March 1990", "born [date]"),
        ("dob 1962/03/21", "dob [date]"),
        ("2022.07.20", "[date]"),
        ("20-07-2022", "[date]"),
        ("20.07.2022", "[date]"),
        ("dob 07-20-2022", "dob [date]"),
        ("dob 7.20.2022", "dob [date]"),
        ("Jul-20-2022", "[date]"),
        ("20-Jul-2022", "[date]"),
        ("2022-Jul-20", "[date]"),
        ("seen 20-JUL-2022 and 2022-jul-2", "seen [date] and [date]"),
        ("20220720", "[date]"),
        ("07202022", "[date]"),
        ("dob 20072022", "dob [date]"),
        ("dob=20240229;", "dob=[date];"),
        ("born 19000101", "born [date]"),
        ("due may 2022-07-20", "due may [date]"),
        ("sep 2022.07.20.", "sep [date]."),
        ("loaded 20-Jul-22", "loaded [date]"),
    ];

    const ADDRESSES: &[(&str, &str)] = &[
        ("406 Kohler Camp", "[address]"),
        ("lives at 406 Kohler Camp, apt", "lives at [address], apt"),
        ("1068 Kunde Overpass Suite 33", "[address]"),
        ("565 Wuckert Light Unit 63", "[address]"),
        ("moved to 12 Main st #4 last", "moved to [address] last"),
        ("100 5th Avenue, Apt 4B", "[address]"),
        ("12 North Elm Tree Road", "[address]"),
        ("406 Kohler Camp, Boston, MA 02108", "[address]"),
        ("1068 Kunde Overpass Suite 33, South Boston, MA 02127-1234", "[address]"),
        ("12 Main Street, Springfield", "[address], [name]"),
    ];

    const NAMES: &[(&str, &str)] = &[
        ("Alice368 Gleason633", "[name]"),
        ("patient Bob965 consented", "patient [name] consented"),
        ("Dr. Alice Smith signed", "[name] signed"),
        ("seen by Mrs. O'Brien", "seen by [name]"),
        ("Mary-Jane Watson", "[name]"),
        ("Alice J. Smith", "[name]"),
        ("patient=Alice368 tenant=northwind", "patient=[name] tenant=northwind"),
        ("Alice368, Bob965", "[name], [name]"),
    ];

    const NUMBERS: &[(&str, &str)] = &[
        ("mrn 123456789", "mrn [id-number]"),
        ("mrn123456789 opened", "mrn[id-number] opened"),
        ("account 4025550123", "account [id-number]"),
        ("batch 12345678", "batch 12345678"),
    ];

    const COMBINED: &[(&str, &str)] = &[
        (
            "Alice368 Gleason633 born 1962-03-01 at 406 Kohler Camp, ssn 999-12-3456, call (402) 555-0123",
            "[name] born [date] at [address], ssn [ssn], call [phone]",
        ),
        (
            "Mr. Bob965 Smith (bob965@example.com, +1 402 555 0123) paid with 4111-1111-1111-1111 on 03/01/2024",
            "[name] ([email], [phone]) paid with [card] on [date]",
        ),
        (
            "Alice368 (alice368@localhost) born 20-Jul-2022, ssn 999.49.3983, card 4111.1111.1111.1111",
            "[name] ([email]) born [date], ssn [ssn], card [card]",
        ),
        (
            "record 3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab of Alice368 deleted at 2031-10-16T00:00:00Z",
            "record 3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab of [name] deleted at 2031-10-16T00:00:00Z",
        ),
    ];

    const SURVIVORS: &[(&str, &str)] = &[
        ("3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab", "3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab"),
        ("3F6FD0BB-1C2D-4E5F-8A9B-0123456789AB", "3F6FD0BB-1C2D-4E5F-8A9B-0123456789AB"),
        ("id 12345678-1234-1234-1234-123456789012", "id 12345678-1234-1234-1234-123456789012"),
        ("legal hold hold-7 placed", "legal hold hold-7 placed"),
        ("hold-42", "hold-42"),
        ("tenant northwind", "tenant northwind"),
        ("tenant=northwind", "tenant=northwind"),
        ("purged 12 records", "purged 12 records"),
        ("policy 2026.1", "policy 2026.1"),
        ("retain until 2031-10-16T00:00:00Z", "retain until 2031-10-16T00:00:00Z"),
        ("at 2031-10-16T08:30:00.250+02:00", "at 2031-10-16T08:30:00.250+02:00"),
        (
            "exported CSV for HIPAA (PHI, SSN, UTC, ID)",
            "exported CSV for HIPAA (PHI, SSN, UTC, ID)",
        ),
        ("3 IDs sent over HL7", "3 IDs sent over HL7"),
        ("sha256 v2 digest ok", "sha256 v2 digest ok"),
        ("purged 12 records on the fast path", "purged 12 records on the fast path"),
        ("elapsed 0.1234567891 s", "elapsed 0.1234567891 s"),
        (
            "digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
        ("[name] born [date] at [address]", "[name] born [date] at [address]"),
        ("release 2026.04+85e9b3c283d7", "release 2026.04+85e9b3c283d7"),
        ("pi 3.14", "pi 3.14"),
        ("readings 1234.5678 9012.3456", "readings 1234.5678 9012.3456"),
        ("host 192.168.1.20 up", "host 192.168.1.20 up"),
        ("at 2022-07-20T10:30:00Z", "at 2022-07-20T10:30:00Z"),
        ("batch 20230229", "batch 20230229"),
        ("batch 18991231", "batch 18991231"),
        ("batch 99999999", "batch 99999999"),
        ("elapsed 0.20220720 s", "elapsed 0.20220720 s"),
        ("run 20220720T103000Z", "run 20220720T103000Z"),
        ("", ""),
    ];

    const TABLES: &[&[(&str, &str)]] =
        &[EMAILS, CARDS, SSNS, PHONES, DATES, ADDRESSES, NAMES, NUMBERS, COMBINED, SURVIVORS];

    #[test]
    fn sanitize_emails() {
        check_all(EMAILS);
    }

    #[test]
    fn sanitize_cards() {
        check_all(CARDS);
    }

    #[test]
    fn sanitize_ssns() {
        check_all(SSNS);
    }

    #[test]
    fn sanitize_phones() {
        check_all(PHONES);
    }

    #[test]
    fn sanitize_dates() {
        check_all(DATES);
    }

    #[test]
    fn sanitize_addresses() {
        check_all(ADDRESSES);
    }

    #[test]
    fn sanitize_names() {
        check_all(NAMES);
    }

    #[test]
    fn sanitize_long_numbers() {
        check_all(NUMBERS);
    }

    #[test]
    fn sanitize_several_kinds() {
        check_all(COMBINED);
    }

    #[test]
    fn sanitize_keeps_ids() {
        check_all(SURVIVORS);
    }

    #[test]
    fn sanitize_is_idempotent() {
        for (input, _) in TABLES.iter().copied().flatten() {
            let once = sanitize(input);
            assert_eq!(sanitize(&once), once, "input {input:?}");
        }
    }

    #[test]
    fn sanitize_rejects_forged_tokens() {
        let forged = format!("{TOKEN_OPEN}{}{TOKEN_CLOSE}", TOKEN_DIGITS[0]);
        let output = sanitize(&format!("{forged} 3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab"));
        assert_eq!(output, "\u{FFFD}\u{FFFD}\u{FFFD} 3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab");
    }

    #[test]
    fn card_detection() {
        let cases: &[(&str, bool)] = &[
            ("4111 1111 1111 1111", true),
            ("4111-1111-1111-1111", true),
            ("5500005555555559", true),
            ("paid with 4111 1111 1111 1111 yesterday", true),
            ("3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab", false),
            ("12345678-1234-1234-1234-123456789012", false),
            ("999-12-3456", false),
            ("(402) 555-0123", false),
            ("+1 402 555 0123", false),
            ("1234567812345678", false),
            ("x4111111111111111", false),
            ("purged 12 records", false),
            ("phones 402-555-0123 402-555-0199", false),
            ("ref 1234 5678 1234 5678", false),
            ("4111.1111.1111.1111", true),
            ("4111  1111  1111  1111", true),
            ("ref 1234.5678.1234.5678", false),
            ("readings 1234.5678 9012.3456", false),
            ("pi 3.14", false),
        ];
        for &(text, expected) in cases {
            assert_eq!(contains_card_number(text), expected, "contains_card_number({text:?})");
        }
    }

    #[test]
    fn input_card_numbers_in_any_form() {
        let cases: &[&str] = &[
            "4111 1111 1111 1111",
            "4111\t1111\t1111\t1111",
            "4111\r\n\r\n1111\n1111\n1111",
            "4111\u{a0}1111\u{a0}1111\u{a0}1111",
            "\u{ff14}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11}",
            "card4111111111111111x",
            "q_4111_1111_1111_1111",
            "4111\u{2013}1111\u{2013}1111\u{2013}1111",
            "4111\u{200b}1111\u{200b}1111\u{200b}1111",
            "4\u{ad}1\u{ad}1\u{ad}1 1111 1111 1111",
            "4\u{301}1\u{301}1\u{301}1\u{301} 1111 1111 1111",
            "4111,1111,1111,1111",
            "4111/1111/1111/1111",
            "4111 -- 1111 -- 1111 -- 1111",
            "4111+1111:1111|1111",
            "4111\u{2022}1111\u{b7}1111\u{2026}1111",
            "\u{664}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661}",
            "\u{96a}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}\u{967}",
            "\u{1d7d2}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}\u{1d7cf}",
            "\u{2074}\u{b9}\u{b9}\u{b9} \u{b9}\u{b9}\u{b9}\u{b9} \u{b9}\u{b9}\u{b9}\u{b9} \u{b9}\u{b9}\u{b9}\u{b9}",
            "\u{2463}\u{2460}\u{2460}\u{2460} \u{2460}\u{2460}\u{2460}\u{2460} \u{2460}\u{2460}\u{2460}\u{2460} \u{2460}\u{2460}\u{2460}\u{2460}",
            "card 4111 1111 1111 1111 exp 12/27",
            "4111 1111 1111 1111 12/27",
            "3782 822463 10005",
            "2221 0000 0000 0009",
        ];
        for text in cases {
            assert!(input_contains_card_number(text), "{text:?} contains a card number");
        }
    }

    #[test]
    fn input_clinical_text_has_no_card_number() {
        let cases: &[&str] = &[
            "4111 1111 1111 1112",
            "1234567812345678",
            "3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab",
            "12345678-1234-1234-1234-123456789012",
            "2024-06-01 2024-06-02",
            "+1 402 555 0123",
            "phones 402-555-0123, 402-555-0199",
            "took 2 tablets at 8 and 2 at 20",
            "Temperatures (C) over 5 days: 37.4 36.6 37.7 36.6 37.5",
            "Resting heart rate this week: 62 73 63 93 85 61 94",
            "Weight (kg): 59.0 68.7 56.7 60.9 65.6",
            "Admitted 30.08.2022 - 06.10.2020",
            "BP 120/80 118/76 135/88 142/91 128/84",
            "NPI 1245319599",
            "",
        ];
        for text in cases {
            assert!(!input_contains_card_number(text), "{text:?} contains no card number");
        }
    }
}
