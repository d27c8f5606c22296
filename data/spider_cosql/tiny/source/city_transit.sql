-- city_transit: bus lines, stops, which line serves which stop (line_stop), and drivers assigned to lines.
-- Join paths: stop -> line_stop -> line -> driver.
CREATE TABLE line (
    line_id INTEGER PRIMARY KEY,
    line_name TEXT,
    fare REAL,
    opened INTEGER
);
CREATE TABLE stop (
    stop_id INTEGER PRIMARY KEY,
    stop_name TEXT,
    district TEXT,
    shelter TEXT
);
CREATE TABLE line_stop (
    line_id INTEGER,
    stop_id INTEGER,
    stop_order INTEGER,
    PRIMARY KEY (line_id, stop_id),
    FOREIGN KEY (line_id) REFERENCES line(line_id),
    FOREIGN KEY (stop_id) REFERENCES stop(stop_id)
);
CREATE TABLE driver (
    driver_id INTEGER PRIMARY KEY,
    name TEXT,
    years_experience INTEGER,
    line_id INTEGER,
    FOREIGN KEY (line_id) REFERENCES line(line_id)
);

INSERT INTO line VALUES
 (1, 'Red', 2.5, 1990),
 (2, 'Blue', 2.0, 1995),
 (3, 'Green', 3.0, 2004),
 (4, 'Orange', 2.75, 2011),
 (5, 'Night Owl', 4.0, 2016),
 (6, 'Purple', 2.25, 1998),
 (7, 'Yellow', 2.0, 2008),
 (8, 'Airport Express', 5.5, 2014),
 (9, 'Harbor Loop', 1.5, 2019),
 (10, 'Silver', 3.25, 2021);

INSERT INTO stop VALUES
 (1, 'Central Station', 'Downtown', 'yes'),
 (2, 'Market Square', 'Downtown', 'yes'),
 (3, 'River Park', 'Riverside', 'no'),
 (4, 'College Gate', 'University', 'yes'),
 (5, 'Hill Road', 'Uptown', 'no'),
 (6, 'Harbor Point', 'Harbor', 'yes'),
 (7, 'Old Mill', 'Riverside', 'no'),
 (8, 'Airport', 'Airport', 'yes'),
 (9, 'Library', 'University', 'no'),
 (10, 'Stadium', 'Uptown', 'yes'),
 (11, 'Quarry Lane', 'Uptown', 'no'),
 (12, 'City Hall', 'Downtown', 'no'),
 (13, 'Fish Market', 'Harbor', 'no'),
 (14, 'Park Avenue', 'Midtown', 'yes'),
 (15, 'Museum', 'Downtown', 'yes'),
 (16, 'Cedar Park', 'Riverside', 'no');

-- Line 10 (Silver) has no stops yet; stop 11 (Quarry Lane) is served by no line. The Red line's
-- stop_order differs from its stop_id order, so "in route order" changes the answer.
INSERT INTO line_stop VALUES
 (1, 16, 1), (1, 2, 2), (1, 1, 3), (1, 3, 4), (1, 7, 5),
 (2, 1, 1), (2, 4, 2), (2, 9, 3), (2, 14, 4),
 (3, 2, 1), (3, 5, 2), (3, 10, 3),
 (4, 6, 1), (4, 1, 2), (4, 8, 3),
 (5, 8, 1), (5, 1, 2), (5, 2, 3), (5, 6, 4),
 (6, 12, 1), (6, 14, 2), (6, 15, 3), (6, 4, 4),
 (7, 3, 1), (7, 12, 2), (7, 10, 3),
 (8, 1, 1), (8, 8, 2),
 (9, 6, 1), (9, 13, 2);

-- Line 10 (Silver) has no driver.
INSERT INTO driver VALUES
 (1, 'Ivy Kent', 12, 1),
 (2, 'Jon Lamb', 3, 1),
 (3, 'Kara Moss', 7, 2),
 (4, 'Leo Nunn', 15, 3),
 (5, 'Maya Ortiz', 1, 4),
 (6, 'Nate Price', 9, 5),
 (7, 'Oona Rhee', 4, 2),
 (8, 'Paul Sims', 20, 3),
 (9, 'Quin Todd', 6, 5),
 (10, 'Rita Ueda', 11, 6),
 (11, 'Saul Vega', 2, 7),
 (12, 'Tess Wade', 8, 8),
 (13, 'Umar Xu', 5, 9),
 (14, 'Vera Yates', 17, 8);
