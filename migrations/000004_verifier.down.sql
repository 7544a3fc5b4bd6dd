DROP TABLE IF EXISTS scrub_queue;
