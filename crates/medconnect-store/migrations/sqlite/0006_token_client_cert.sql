-- Binds storefront service tokens to a client certificate.
--
-- client_cert_sha256 is the SHA-256 of the client certificate's DER bytes, 64 lower-case hex
-- digits. A storefront token authenticates only over a TLS connection whose verified client
-- certificate has this fingerprint. Only storefront tokens carry one. Storefront tokens
-- created before this version keep a NULL fingerprint, so they never authenticate again and
-- must be replaced by tokens created with `medconnect token create --client-cert FILE`.
-- SQLite checks the constraint against the rows already present.

ALTER TABLE service_tokens ADD COLUMN client_cert_sha256 TEXT
    CHECK (client_cert_sha256 IS NULL
        OR (role = 'storefront' AND length(client_cert_sha256) = 64));
