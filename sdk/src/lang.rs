//! Which script(s) a language is written in, from FLORES-style codes (`bod_Tibt`), ISO 639 codes
//! (`bo`, `bod`, `zh`, `en`) and BCP 47 tags (`zh-Hant`, `sr-Latn`, `pt-BR`).

use crate::script::Script;

const JAPANESE: &[Script] = &[Script::Han, Script::Hiragana, Script::Katakana];
const KOREAN: &[Script] = &[Script::Hangul, Script::Han];

/// The scripts of an ISO 15924 code (`Tibt`, `Hans`, `Jpan`, ...), case-insensitive.
pub fn scripts_of_iso15924(code: &str) -> Option<&'static [Script]> {
    use Script::*;
    let s: &'static [Script] = match code.to_ascii_lowercase().as_str() {
        "latn" => &[Latin],
        "grek" => &[Greek],
        "cyrl" => &[Cyrillic],
        "armn" => &[Armenian],
        "hebr" => &[Hebrew],
        "arab" => &[Arabic],
        "deva" => &[Devanagari],
        "beng" => &[Bengali],
        "guru" => &[Gurmukhi],
        "gujr" => &[Gujarati],
        "orya" => &[Oriya],
        "taml" => &[Tamil],
        "telu" => &[Telugu],
        "knda" => &[Kannada],
        "mlym" => &[Malayalam],
        "sinh" => &[Sinhala],
        "thai" => &[Thai],
        "laoo" => &[Lao],
        "tibt" => &[Tibetan],
        "mymr" => &[Myanmar],
        "geor" => &[Georgian],
        "hang" => &[Hangul],
        "kore" => KOREAN,
        "ethi" => &[Ethiopic],
        "khmr" => &[Khmer],
        "hira" => &[Hiragana],
        "kana" => &[Katakana],
        "hrkt" => &[Hiragana, Katakana],
        "jpan" => JAPANESE,
        "hani" | "hans" | "hant" => &[Han],
        _ => return None,
    };
    Some(s)
}

/// The default scripts of an ISO 639-1 or 639-3 language code (lower case).
fn scripts_of_iso639(code: &str) -> Option<&'static [Script]> {
    use Script::*;
    let s: &'static [Script] = match code {
        "en" | "eng" | "fr" | "fra" | "fre" | "de" | "deu" | "ger" | "es" | "spa" | "it" | "ita" | "pt"
        | "por" | "nl" | "nld" | "sv" | "swe" | "da" | "dan" | "no" | "nor" | "nb" | "nob" | "nn" | "nno"
        | "fi" | "fin" | "pl" | "pol" | "cs" | "ces" | "sk" | "slk" | "sl" | "slv" | "hr" | "hrv" | "bs"
        | "bos" | "ro" | "ron" | "hu" | "hun" | "tr" | "tur" | "vi" | "vie" | "id" | "ind" | "ms" | "msa"
        | "zsm" | "tl" | "tgl" | "fil" | "sw" | "swa" | "swh" | "eu" | "eus" | "ca" | "cat" | "gl"
        | "glg" | "et" | "est" | "ekk" | "lv" | "lav" | "lvs" | "lt" | "lit" | "is" | "isl" | "ga"
        | "gle" | "cy" | "cym" | "mt" | "mlt" | "sq" | "sqi" | "als" | "af" | "afr" | "zu" | "zul" | "xh"
        | "xho" | "yo" | "yor" | "ig" | "ibo" | "ha" | "hau" | "so" | "som" | "uz" | "uzb" | "uzn" | "az"
        | "aze" | "azj" | "tk" | "tuk" | "la" | "lat" | "eo" | "epo" | "jv" | "jav" | "su" | "sun" | "mg"
        | "mlg" | "qu" | "quy" | "ht" | "hat" | "lb" | "ltz" => &[Latin],
        "el" | "ell" | "gre" => &[Greek],
        "ru" | "rus" | "uk" | "ukr" | "be" | "bel" | "bg" | "bul" | "mk" | "mkd" | "sr" | "srp" | "kk"
        | "kaz" | "ky" | "kir" | "tg" | "tgk" | "mn" | "mon" | "khk" | "tt" | "tat" | "ba" | "bak" => {
            &[Cyrillic]
        }
        "hy" | "hye" | "arm" => &[Armenian],
        "he" | "heb" | "yi" | "yid" | "ydd" => &[Hebrew],
        "ar" | "ara" | "arb" | "fa" | "fas" | "per" | "pes" | "ur" | "urd" | "ps" | "pus" | "pbt" | "ug"
        | "uig" | "ckb" | "sd" | "snd" | "ks" | "kas" => &[Arabic],
        "hi" | "hin" | "mr" | "mar" | "ne" | "nep" | "npi" | "sa" | "san" | "mai" | "bho" | "awa" | "mag"
        | "hne" => &[Devanagari],
        "bn" | "ben" | "as" | "asm" => &[Bengali],
        "pa" | "pan" => &[Gurmukhi],
        "gu" | "guj" => &[Gujarati],
        "or" | "ori" | "ory" => &[Oriya],
        "ta" | "tam" => &[Tamil],
        "te" | "tel" => &[Telugu],
        "kn" | "kan" => &[Kannada],
        "ml" | "mal" => &[Malayalam],
        "si" | "sin" => &[Sinhala],
        "th" | "tha" => &[Thai],
        "lo" | "lao" => &[Lao],
        "bo" | "bod" | "tib" | "dz" | "dzo" => &[Tibetan],
        "my" | "mya" | "bur" | "shn" => &[Myanmar],
        "ka" | "kat" | "geo" => &[Georgian],
        "ko" | "kor" => KOREAN,
        "am" | "amh" | "ti" | "tir" => &[Ethiopic],
        "km" | "khm" => &[Khmer],
        "ja" | "jpn" => JAPANESE,
        "zh" | "zho" | "chi" | "cmn" | "yue" | "wuu" | "lzh" => &[Han],
        _ => return None,
    };
    Some(s)
}

/// The script(s) text in `language` is expected to be written in; `None` for an unknown code.
///
/// A script subtag wins (`bod_Tibt` → Tibetan, `zh-Hant` → Han, `sr-Latn` → Latin, `uzn_Cyrl` →
/// Cyrillic); otherwise the language's usual script (`bo` → Tibetan, `ja` → Han + kana, `ko` → Hangul
/// + Han). Case-insensitive; `_` and `-` both separate subtags.
pub fn expected_scripts(language: &str) -> Option<&'static [Script]> {
    let mut parts = language.trim().split(['_', '-']);
    let lang = parts.next()?.to_ascii_lowercase();
    let rest: Vec<&str> = parts.collect();
    if let Some(s) = rest.iter().filter(|p| p.len() == 4).find_map(|p| scripts_of_iso15924(p)) {
        return Some(s);
    }
    scripts_of_iso639(&lang)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Script::*;

    #[test]
    fn flores_iso_and_bcp47_codes() {
        let cases: &[(&str, &[Script])] = &[
            ("bod_Tibt", &[Tibetan]),
            ("bo", &[Tibetan]),
            ("BOD", &[Tibetan]),
            ("zh", &[Han]),
            ("zho_Hans", &[Han]),
            ("zh-Hant-TW", &[Han]),
            ("en", &[Latin]),
            ("eng_Latn", &[Latin]),
            ("pt-BR", &[Latin]),
            ("sr", &[Cyrillic]),
            ("sr-Latn", &[Latin]),
            ("rus_Cyrl", &[Cyrillic]),
            ("arb_Arab", &[Arabic]),
            ("hin_Deva", &[Devanagari]),
            ("ben_Beng", &[Bengali]),
            ("tha_Thai", &[Thai]),
            ("lao_Laoo", &[Lao]),
            ("khm_Khmr", &[Khmer]),
            ("mya_Mymr", &[Myanmar]),
            ("amh_Ethi", &[Ethiopic]),
            ("kor_Hang", &[Hangul]),
            ("ko", &[Hangul, Han]),
            ("jpn_Jpan", &[Han, Hiragana, Katakana]),
            ("ja", &[Han, Hiragana, Katakana]),
            ("ell_Grek", &[Greek]),
            ("heb_Hebr", &[Hebrew]),
            ("kat_Geor", &[Georgian]),
            ("tel_Telu", &[Telugu]),
            ("tam_Taml", &[Tamil]),
            ("sin_Sinh", &[Sinhala]),
            ("sw", &[Latin]),
        ];
        for (code, want) in cases {
            assert_eq!(expected_scripts(code), Some(*want), "{code}");
        }
        for code in ["", "xx", "klingon", "tlh_Piqd"] {
            assert_eq!(expected_scripts(code), None, "{code}");
        }
    }
}
