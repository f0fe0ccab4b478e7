-- Binds storefront service tokens to a client certificate, equal in content to the embedded
-- schema at version 6.
--
-- client_cert_sha256 is the SHA-256 of the client certificate's DER bytes, 64 lower-case hex
-- digits. A storefront token authenticates only over a TLS connection whose verified client
-- certificate has this fingerprint. Only storefront tokens carry one. Storefront tokens
-- created before this version keep a NULL fingerprint, so they never authenticate again and
-- must be replaced by tokens created with `medconnect token create --client-cert FILE`.
--
-- The grants of version 2 cover the new column: medconnect_app may SELECT and INSERT every
-- column of service_tokens, and medconnect_operator may SELECT them, but neither may UPDATE
-- it, so a token's binding cannot change after it is created.

ALTER TABLE service_tokens
    ADD COLUMN client_cert_sha256 TEXT,
    ADD CONSTRAINT service_tokens_client_cert
        CHECK (client_cert_sha256 IS NULL
            OR (role = 'storefront' AND length(client_cert_sha256) = 64));
