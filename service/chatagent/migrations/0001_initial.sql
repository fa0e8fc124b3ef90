CREATE TABLE IF NOT EXISTS conversations (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    user_id VARCHAR(128) NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    KEY idx_conversations_user (user_id),
    KEY idx_conversations_updated (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS messages (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    conversation_id VARCHAR(64) NOT NULL,
    request_id VARCHAR(64) NOT NULL,
    role VARCHAR(16) NOT NULL,
    content MEDIUMTEXT NOT NULL,
    intent VARCHAR(64) NULL,
    sources TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    UNIQUE KEY uq_messages_request_role (request_id, role),
    KEY idx_messages_conversation (conversation_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS feedback (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id VARCHAR(64) NOT NULL,
    score TINYINT NOT NULL,
    comment TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    UNIQUE KEY uq_feedback_request (request_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
