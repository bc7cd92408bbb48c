//! Provider presets: `config/presets.toml`, embedded in the binary and read once. Each table is
//! a [`ProviderSettings`] holding what every client of that provider shares, with the
//! provider's quirks written beside it in the file.

use std::{collections::BTreeMap, sync::LazyLock};

use figment::{
    providers::{Format, Toml},
    Figment,
};

use super::ProviderSettings;

const PRESETS: &str = include_str!("../../config/presets.toml");

/// Parsed on first use. The file is part of the binary and a unit test parses it, so a parse
/// failure is a build defect: it stops the process at start rather than being ignored.
static PARSED: LazyLock<BTreeMap<String, ProviderSettings>> = LazyLock::new(|| {
    Figment::from(Toml::string(PRESETS))
        .extract()
        .expect("config/presets.toml is valid (a unit test parses it)")
});

/// The preset of that name.
pub fn get(name: &str) -> Option<&'static ProviderSettings> {
    PARSED.get(name)
}

/// Every preset's name, for the error that names an unknown one.
pub fn names() -> Vec<&'static str> {
    PARSED.keys().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset parses and holds nothing that belongs to one client.
    #[test]
    fn presets_parse_and_hold_no_client_settings() {
        assert_eq!(names(), ["google", "ory-hydra", "salesforce", "understory"]);
        for name in names() {
            let p = get(name).unwrap();
            assert!(p.preset.is_none(), "{name}");
            assert!(p.client_id.is_none() && p.client_secret.is_none(), "{name}");
            assert!(
                p.client_secret_file.is_none() && p.client_secret_files.is_none(),
                "{name}"
            );
            assert!(p.redirect_uris.is_empty(), "{name}");
            for url in [&p.authorization_endpoint, &p.token_endpoint, &p.revocation_endpoint]
                .into_iter()
                .flatten()
            {
                assert_eq!(url.scheme(), "https", "{name}");
            }
        }
        // The quirks the file describes are in the data.
        let google = get("google").unwrap();
        assert_eq!(google.extra_authorization_params["access_type"], "offline");
        assert_eq!(google.extra_authorization_params["prompt"], "consent");
        assert_eq!(google.offline_scope.as_deref(), Some(""));
        let salesforce = get("salesforce").unwrap();
        assert_eq!(
            salesforce.assumed_token_lifetime,
            Some(std::time::Duration::from_secs(15 * 60))
        );
        assert_eq!(salesforce.offline_scope.as_deref(), Some("refresh_token"));
    }
}
