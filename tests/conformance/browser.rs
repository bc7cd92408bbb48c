//! The customer's browser, headless: follows the authorization URL through the server's login
//! and consent pages with a cookie jar, exactly as a person clicking would, and stops at the
//! redirect to the vault caller's callback URL (where nothing listens in these tests).

use std::time::Duration;

use url::Url;

use crate::authserver::{install_crypto_provider, REDIRECT_URI};

/// What the customer does on the consent page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

pub struct Browser {
    http: reqwest::Client,
}

impl Browser {
    /// A browser with an empty cookie jar: a customer who is not signed in yet.
    pub fn new() -> Self {
        install_crypto_provider();
        Self {
            http: reqwest::Client::builder()
                .cookie_store(true)
                // Redirects are followed by hand: the last one must not be followed.
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    /// Signs in (any login works) and allows or denies; returns the callback URL the server
    /// finally redirected to, with `code` or `error`, `state` and `iss` in its query.
    pub async fn authorize(&self, authorization_url: &str, decision: Decision) -> String {
        let mut next = self.http.get(authorization_url);
        let mut url = Url::parse(authorization_url).unwrap();
        for _ in 0..20 {
            let response = next.send().await.unwrap();
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                url = url.join(&location).unwrap();
                if url.as_str().starts_with(REDIRECT_URI) {
                    return url.into();
                }
                next = self.http.get(url.clone());
                continue;
            }
            let page = response.text().await.unwrap();
            assert!(status.is_success(), "the server answered {status} at {url}: {page}");
            next = if page.contains(r#"name="prompt" value="login""#) {
                self.http.post(form_action(&url, &page)).form(&[
                    ("prompt", "login"),
                    ("login", "customer@example.com"),
                    ("password", "any"),
                ])
            } else if page.contains(r#"name="prompt" value="consent""#) {
                match decision {
                    Decision::Allow => self.http.post(form_action(&url, &page)).form(&[("prompt", "consent")]),
                    // The page's "[ Cancel ]" link: the customer refuses.
                    Decision::Deny => self.http.get(link_before(&url, &page, ">[ Cancel ]<")),
                }
            } else {
                panic!("an unexpected page at {url}: {page}");
            };
        }
        panic!("too many steps through the authorization server, last at {url}");
    }
}

/// The `action` of the page's form, resolved against the page's URL.
fn form_action(page_url: &Url, page: &str) -> Url {
    let start = page.find("action=\"").expect("the page has a form") + "action=\"".len();
    let end = start + page[start..].find('"').unwrap();
    page_url.join(&page[start..end].replace("&amp;", "&")).unwrap()
}

/// The `href` of the link whose text follows it as `text`, resolved against the page's URL.
fn link_before(page_url: &Url, page: &str, text: &str) -> Url {
    let at = page
        .find(text)
        .unwrap_or_else(|| panic!("no {text} link on the page: {page}"));
    let start = page[..at].rfind("href=\"").unwrap() + "href=\"".len();
    let end = start + page[start..].find('"').unwrap();
    page_url.join(&page[start..end].replace("&amp;", "&")).unwrap()
}
