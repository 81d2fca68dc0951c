"""The sponsor's CRM (patient services): enrolment and order records over REST/JSON, OAuth2."""
