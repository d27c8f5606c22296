-- zoo: enclosures, the animals living in them, keepers, and which keeper cares for which animal (care).
-- Join paths: keeper -> care -> animal -> enclosure.
CREATE TABLE enclosure (
    enclosure_id INTEGER PRIMARY KEY,
    enclosure_name TEXT,
    habitat TEXT,
    area INTEGER
);
CREATE TABLE animal (
    animal_id INTEGER PRIMARY KEY,
    name TEXT,
    species TEXT,
    age INTEGER,
    weight REAL,
    enclosure_id INTEGER,
    FOREIGN KEY (enclosure_id) REFERENCES enclosure(enclosure_id)
);
CREATE TABLE keeper (
    keeper_id INTEGER PRIMARY KEY,
    name TEXT,
    hired_year INTEGER,
    shift TEXT
);
CREATE TABLE care (
    keeper_id INTEGER,
    animal_id INTEGER,
    hours_per_week INTEGER,
    PRIMARY KEY (keeper_id, animal_id),
    FOREIGN KEY (keeper_id) REFERENCES keeper(keeper_id),
    FOREIGN KEY (animal_id) REFERENCES animal(animal_id)
);

INSERT INTO enclosure VALUES
 (1, 'Savanna', 'grassland', 5000),
 (2, 'Rainforest House', 'forest', 1200),
 (3, 'Polar Point', 'arctic', 2500),
 (4, 'Reptile Hall', 'desert', 600),
 (5, 'Aviary', 'forest', 900),
 (6, 'Monkey Island', 'forest', 1500),
 (7, 'Outback', 'grassland', 3200),
 (8, 'Penguin Cove', 'arctic', 800),
 (9, 'Desert Dome', 'desert', 1100),
 (10, 'Night House', 'forest', 400);

INSERT INTO animal VALUES
 (1, 'Zuri', 'lion', 8, 190.0, 1),
 (2, 'Kito', 'lion', 5, 160.5, 1),
 (3, 'Tembo', 'elephant', 30, 4100.0, 1),
 (4, 'Mango', 'parrot', 12, 1.1, 5),
 (5, 'Kiwi', 'parrot', 3, 0.9, 5),
 (6, 'Nanuk', 'polar bear', 14, 450.0, 3),
 (7, 'Sesi', 'python', 6, 40.0, 4),
 (8, 'Rango', 'iguana', 4, 4.5, 4),
 (9, 'Coco', 'monkey', 9, 12.0, 6),
 (10, 'Lulu', 'monkey', 2, 8.5, 6),
 (11, 'Pip', 'penguin', 5, 25.0, 8),
 (12, 'Juno', 'giraffe', 11, 800.0, 1),
 (13, 'Skipper', 'penguin', 7, 23.5, 8),
 (14, 'Kanga', 'kangaroo', 6, 55.0, 7),
 (15, 'Joey', 'kangaroo', 1, 18.0, 7),
 (16, 'Matilda', 'emu', 9, 38.0, 7),
 (17, 'Sandy', 'meerkat', 3, 0.8, 9),
 (18, 'Dusty', 'meerkat', 4, 0.7, 9),
 (19, 'Luna', 'bat', 2, 0.03, 10),
 (20, 'Otto', 'sloth', 16, 6.0, 2),
 (21, 'Kaya', 'toucan', 5, 0.6, 2),
 (22, 'Aurora', 'snowy owl', 8, 2.0, 3),
 (23, 'Bruno', 'monkey', 12, 14.5, 6),
 (24, 'Tiko', 'kinkajou', 6, 3.0, 10);

INSERT INTO keeper VALUES
 (1, 'Amara Hill', 2010, 'day'),
 (2, 'Boris Kain', 2015, 'night'),
 (3, 'Celia Ruiz', 2018, 'day'),
 (4, 'Dmitri Volk', 2021, 'day'),
 (5, 'Elsa Moreau', 2012, 'night'),
 (6, 'Farid Nasser', 2024, 'day'),
 (7, 'Grace Obi', 2016, 'day'),
 (8, 'Hector Lund', 2009, 'night'),
 (9, 'Isla Byrne', 2022, 'day'),
 (10, 'Jonas Weber', 2023, 'night');

-- Farid Nasser (6) cares for no animal yet (for NOT IN questions).
INSERT INTO care VALUES
 (1, 1, 10), (1, 2, 10), (1, 3, 15), (1, 12, 6),
 (2, 6, 12), (2, 11, 8), (2, 13, 8), (2, 22, 5),
 (3, 4, 5), (3, 5, 5), (3, 9, 7), (3, 10, 7), (3, 21, 4),
 (4, 7, 6), (4, 8, 4), (4, 17, 3),
 (5, 3, 10), (5, 12, 9), (5, 14, 6),
 (7, 14, 5), (7, 15, 5), (7, 16, 6),
 (8, 19, 4), (8, 24, 4), (8, 20, 3),
 (9, 23, 7), (9, 9, 5), (9, 18, 3),
 (10, 19, 2), (10, 1, 4);
