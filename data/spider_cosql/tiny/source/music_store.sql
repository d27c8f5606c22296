-- music_store: artists, their albums, customers and their purchases.
-- Join paths: customer -> purchase -> album -> artist.
CREATE TABLE artist (
    artist_id INTEGER PRIMARY KEY,
    name TEXT,
    country TEXT,
    debut_year INTEGER
);
CREATE TABLE album (
    album_id INTEGER PRIMARY KEY,
    title TEXT,
    artist_id INTEGER,
    release_year INTEGER,
    price REAL,
    genre TEXT,
    FOREIGN KEY (artist_id) REFERENCES artist(artist_id)
);
CREATE TABLE customer (
    customer_id INTEGER PRIMARY KEY,
    name TEXT,
    email TEXT,
    city TEXT
);
CREATE TABLE purchase (
    purchase_id INTEGER PRIMARY KEY,
    customer_id INTEGER,
    album_id INTEGER,
    quantity INTEGER,
    purchase_date TEXT,
    FOREIGN KEY (customer_id) REFERENCES customer(customer_id),
    FOREIGN KEY (album_id) REFERENCES album(album_id)
);

INSERT INTO artist VALUES
 (1, 'The Lanterns', 'UK', 2001),
 (2, 'Mira Sol', 'Spain', 2010),
 (3, 'Blue Harbor', 'USA', 1995),
 (4, 'Kenji Ito', 'Japan', 2008),
 (5, 'Nova Pulse', 'USA', 2015),
 (6, 'Lena Berg', 'Germany', 1999),
 (7, 'Copper Fields', 'USA', 1988),
 (8, 'Amara Keys', 'Nigeria', 2012),
 (9, 'Fjord Lights', 'Norway', 2004),
 (10, 'Rosa Vidal', 'Spain', 2017);

INSERT INTO album VALUES
 (1, 'First Light', 1, 2002, 12.5, 'Rock'),
 (2, 'Night Roads', 1, 2006, 14.0, 'Rock'),
 (3, 'Sol y Mar', 2, 2011, 11.0, 'Pop'),
 (4, 'Harbor Lights', 3, 1996, 9.5, 'Jazz'),
 (5, 'Deep Water', 3, 2003, 10.0, 'Jazz'),
 (6, 'Tokyo Rain', 4, 2009, 13.0, 'Electronic'),
 (7, 'Pulse One', 5, 2016, 15.0, 'Electronic'),
 (8, 'Pulse Two', 5, 2019, 16.5, 'Electronic'),
 (9, 'Stille', 6, 2000, 12.0, 'Classical'),
 (10, 'Winter Suite', 6, 2012, 18.0, 'Classical'),
 (11, 'Canciones', 2, 2018, 12.0, 'Pop'),
 (12, 'Quiet Hours', 4, 2021, 14.5, 'Electronic'),
 (13, 'Dust and Rust', 7, 1989, 8.0, 'Country'),
 (14, 'Long Road Home', 7, 1997, 9.0, 'Country'),
 (15, 'Lagos Nights', 8, 2013, 13.5, 'Afrobeat'),
 (16, 'Northern Sky', 9, 2005, 11.5, 'Rock'),
 (17, 'Midnight Sun', 9, 2014, 12.5, 'Rock'),
 (18, 'Bossa Azul', 10, 2017, 10.5, 'Jazz'),
 (19, 'Golden Hour', 8, 2020, 14.0, 'Pop'),
 (20, 'Blue Harbor Live', 3, 2010, 17.0, 'Jazz');

INSERT INTO customer VALUES
 (1, 'Alice Brown', 'alice@example.com', 'Denver'),
 (2, 'Bob Stone', 'bob@example.com', 'Austin'),
 (3, 'Carla Diaz', 'carla@example.com', 'Denver'),
 (4, 'Dev Patel', 'dev@example.com', 'Seattle'),
 (5, 'Erin Cole', 'erin@example.com', 'Austin'),
 (6, 'Frank Hu', 'frank@example.com', 'Portland'),
 (7, 'Gina Lee', 'gina@example.com', 'Seattle'),
 (8, 'Hugo Marx', 'hugo@example.com', 'Denver'),
 (9, 'Ines Silva', 'ines@example.com', 'Portland'),
 (10, 'Jamal Wright', 'jamal@example.com', 'Austin'),
 (11, 'Kate Olsen', 'kate@example.com', 'Chicago'),
 (12, 'Luis Romero', 'luis@example.com', 'Chicago');

-- Albums 14 and 20 are never purchased (for NOT IN questions).
INSERT INTO purchase VALUES
 (1, 1, 1, 1, '2023-01-05'),
 (2, 1, 3, 2, '2023-02-11'),
 (3, 2, 4, 1, '2023-02-20'),
 (4, 3, 7, 1, '2023-03-02'),
 (5, 3, 8, 1, '2023-03-15'),
 (6, 4, 9, 3, '2023-04-01'),
 (7, 5, 2, 1, '2023-04-18'),
 (8, 5, 7, 2, '2023-05-09'),
 (9, 6, 5, 1, '2023-05-30'),
 (10, 7, 6, 1, '2023-06-12'),
 (11, 7, 10, 1, '2023-06-25'),
 (12, 8, 1, 2, '2023-07-07'),
 (13, 2, 11, 1, '2023-07-19'),
 (14, 4, 3, 1, '2023-08-03'),
 (15, 1, 7, 1, '2023-08-21'),
 (16, 6, 4, 2, '2023-09-10'),
 (17, 9, 15, 1, '2023-09-22'),
 (18, 9, 19, 2, '2023-10-01'),
 (19, 10, 13, 1, '2023-10-08'),
 (20, 10, 7, 1, '2023-10-15'),
 (21, 11, 16, 1, '2023-10-30'),
 (22, 11, 17, 3, '2023-11-04'),
 (23, 12, 18, 1, '2023-11-12'),
 (24, 12, 3, 1, '2023-11-20'),
 (25, 3, 12, 1, '2023-12-01'),
 (26, 8, 9, 1, '2023-12-09'),
 (27, 5, 19, 1, '2023-12-14'),
 (28, 2, 6, 2, '2024-01-06'),
 (29, 7, 1, 1, '2024-01-19'),
 (30, 4, 16, 2, '2024-02-02');
